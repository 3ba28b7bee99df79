"""Shared pieces of the benchmarks: run ``tlbench fit`` in a fresh process and read what it recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_fit(workdir: Path, experiment: str, *args: str, cache_dir: Path | None = None) -> dict:
    """``python -m tlbench fit`` as a user runs it; returns metrics.json plus wall time, that process's peak RSS
    and history."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if cache_dir is not None:
        env["TLBENCH_CACHE_DIR"] = str(cache_dir)
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "fit",
        "--experiment",
        experiment,
        "--trainer.default_root_dir",
        str(workdir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *args,
    ]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"fit failed ({os.waitstatus_to_exitcode(status)}): {log.read()[-2000:]}")
    run = max((workdir / "lightning_logs" / experiment).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["wall_seconds"] = wall
    metrics["peak_rss_mib"] = usage.ru_maxrss / 1024
    metrics["history"] = pd.read_csv(run / "history.csv")
    return metrics


def print_table(
    title: str, rows: list[tuple[str, str, str]], header: tuple[str, str, str] = ("measurement", "value", "ratio")
) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    print(f"\n{title}")
    for row in [header, *rows]:
        print("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
