"""Shared pieces of the benchmarks: run ``tlbench fit`` in a fresh process and read what it recorded, print a
table, and keep what a benchmark printed in ``results/`` (``record_results``)."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tlbench.io import write_text

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "results"
NO_RESULTS_FLAG = "--no_results"


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


def results_file(benchmark: str, folder: Path = RESULTS, day: datetime.date | None = None) -> Path:
    """``FOLDER/<YYYY-MM-DD>_<host>_<benchmark>.md``: dated and named after the machine, so that tables from other
    days and machines sit beside each other instead of replacing one another."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-") or "unknown-host"
    return folder / f"{(day or datetime.date.today()).isoformat()}_{host}_{benchmark}.md"


class _Tee(io.TextIOBase):
    """Writes to the terminal and to a buffer: the benchmark prints as before and its output is kept too."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def machine() -> str:
    """One line naming where a table was measured: host, OS, CPU cores, Python and, if loaded, torch and its GPU."""
    parts = [socket.gethostname(), platform.platform(), f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"]
    torch = sys.modules.get("torch")
    if torch is not None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        parts += [f"torch {torch.__version__}", gpu]
    return ", ".join(parts)


def record_results(main: Callable[[], object], folder: Path = RESULTS) -> Path | None:
    """Run a benchmark's ``main`` and keep what it printed as ``results_file(<script name>)``, with the command and
    the machine. ``--no_results`` (taken out of ``sys.argv`` before ``main`` parses it) only prints. Nothing is
    written when ``main`` fails: a half table would read as a result."""
    keep = NO_RESULTS_FLAG not in sys.argv
    sys.argv[:] = [arg for arg in sys.argv if arg != NO_RESULTS_FLAG]
    printed = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed) if keep else sys.stdout):
        main()
    if not keep:
        return None
    name = Path(sys.argv[0]).stem
    command = shlex.join(["python", f"benchmarks/{name}.py", *sys.argv[1:]])
    finished = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    header = f"# {name}\n\n- command: `{command}`\n- machine: {machine()}\n- finished: {finished}\n"
    path = write_text(results_file(name, folder), f"{header}\n```\n{printed.getvalue().strip()}\n```\n")
    print(f"results: {path}")
    return path
