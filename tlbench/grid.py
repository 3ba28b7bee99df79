"""Grids of ``fit`` runs: datasets x backbones x seeds, one subprocess and one run directory per cell.

Each cell is ``python -m tlbench fit`` in its own process, so a crash, an out-of-memory kill or a bad dataset
ends only that cell, and every cell's run directory follows the same contract as a hand-typed ``fit``
(``lightning_logs/<dataset>_<backbone>_seed<k>/version_N/metrics.json``, beside every other run, so
``tensorboard --logdir lightning_logs`` and ``report`` see them); the grid's own status files and per-cell logs
go to ``lightning_logs/grids/<grid name>/``. The grid itself keeps no state
that matters: whether a cell is finished is read from its ``metrics.json``, so rerunning the same grid after
an interruption skips finished cells. A half-finished cell (killed mid-training) is resumed from its
``last.ckpt`` with ``--ckpt_path last`` when one exists, else restarted: resuming keeps the epochs already
paid for, and fit's resume restores the phase, the recorded times and the history (see ``RunRecorder``).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import pandas as pd

from tlbench.configs import recipe_args, recipe_file
from tlbench.data.discover import images_under
from tlbench.errors import TLBenchError
from tlbench.io import write_csv, write_json
from tlbench.outputs import LOGS
from tlbench.rundir import experiment_name, finished_metrics, has_checkpoint

STATUS_FILE = "grid_status.csv"
PLAN_FILE = "grid.json"
LOG_DIR = "logs"
# Grid names longer than this are shortened with a hash: a folder name must stay well below 255 bytes.
MAX_NAME = 80
# Options the grid sets per cell; an override of one would break the cell's run directory or its split.
RESERVED_OPTIONS = (
    "--config",
    "--model",
    "--data.root",
    "--data.split_seed",
    "--seed_everything",
    "--experiment",
    "--trainer.default_root_dir",
    "--ckpt_path",
)
# A running cell's newest log line is shown this often: redrawn in place on a terminal, as a plain line in a log.
LIVE_SECONDS = 1.0
ECHO_SECONDS = 10.0
# Only a log's tail is read for its last line: a long fit's log (progress bars included) grows to megabytes.
TAIL_BYTES = 8192


@dataclass
class GridSpec:
    """What to run; every field can come from a grid YAML, the command line, or the defaults here."""

    datasets: list[str]
    backbones: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    data_dir: str = "data"
    overrides: list[str] = field(default_factory=list)
    # Named recipes (configs/recipes/<name>.yaml): whole model settings compared as candidates, beside backbones.
    recipes: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One ``fit`` of the grid and, once run, its outcome (the row of ``grid_status.csv``)."""

    index: int
    dataset: str
    data_root: str
    backbone: str  # a backbone name, or a recipe's name when ``named_recipe``
    seed: int
    recipe: list[str]
    named_recipe: bool = False
    status: str = "pending"  # pending | done | skipped (finished before this invocation) | failed
    seconds: float | None = None
    returncode: int | None = None
    error: str = ""
    metrics: str = ""
    command: str = ""

    @property
    def experiment(self) -> str:
        return f"{experiment_name(self.dataset, self.backbone)}_seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.dataset} x {self.backbone} x seed {self.seed}"


def parse_list(value: str | list | int) -> list[str]:
    """``"a,b"`` or ``[a, b]`` -> ``["a", "b"]`` (command-line values are comma-separated strings)."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def build_spec(file_values: dict, cli_values: dict) -> GridSpec:
    """Merge a grid file with command-line values; a value given on the command line wins."""
    merged = {**file_values, **{key: value for key, value in cli_values.items() if value not in (None, [])}}
    if not merged.get("datasets") or not (merged.get("backbones") or merged.get("recipes")):
        raise TLBenchError("the grid needs --datasets and --backbones or --recipes (or a --grid file listing them)")
    try:
        seeds = [int(seed) for seed in parse_list(merged.get("seeds", 0))]
    except ValueError:
        raise TLBenchError(f"seeds must be integers, got {merged['seeds']!r}") from None
    overrides = [str(arg) for arg in merged.get("overrides") or []]
    reserved = sorted({arg.split("=", 1)[0] for arg in overrides} & set(RESERVED_OPTIONS))
    if reserved:
        raise TLBenchError(
            f"the grid sets {', '.join(reserved)} itself for every cell; remove it from the fit overrides"
        )
    return GridSpec(
        parse_list(merged["datasets"]),
        parse_list(merged.get("backbones") or []),
        seeds,
        str(merged.get("data_dir") or "data"),
        overrides,
        parse_list(merged.get("recipes") or []),
    )


def resolve_dataset(name: str, data_dir: str) -> Path:
    """A dataset is a path when it contains a separator, else a folder name under ``data_dir``."""
    path = Path(name).expanduser() if ("/" in name or Path(name).is_absolute()) else Path(data_dir) / name
    if not path.is_dir():
        available = sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir()) if Path(data_dir).is_dir() else []
        raise TLBenchError(
            f"dataset '{name}': {path} is not a folder (in {data_dir}: {', '.join(available) or 'nothing'})"
        )
    if not images_under(path):
        raise TLBenchError(
            f"dataset '{name}': no images under {path}; expected {path}/<class>/<image>.jpg (jpg, png, bmp, webp, tif)"
        )
    return path


def plan_cells(spec: GridSpec) -> list[Cell]:
    """Cells ordered seed, then dataset, then backbone: an interrupted grid leaves whole seeds complete."""
    roots = {}
    for name in spec.datasets:
        path = resolve_dataset(name, spec.data_dir)
        if path.resolve().name in roots:
            raise TLBenchError(f"two datasets are named '{path.resolve().name}'; run names would collide")
        roots[path.resolve().name] = path
    cells = []
    for seed in spec.seeds:
        for dataset, root in roots.items():
            for backbone in spec.backbones:
                cells.append(Cell(len(cells) + 1, dataset, str(root), backbone, seed, recipe_args(dataset, backbone)))
            for recipe in spec.recipes:
                model = ["--model", str(recipe_file(recipe))]
                cells.append(Cell(len(cells) + 1, dataset, str(root), recipe, seed, model, named_recipe=True))
    return cells


def cell_command(cell: Cell, spec: GridSpec, output: Path) -> list[str]:
    """The ``fit`` command line of ``cell``; resumes with ``--ckpt_path last`` when a ``last.ckpt`` exists."""
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "fit",
        *cell.recipe,
        "--data.root",
        cell.data_root,
        *([] if cell.named_recipe else ["--model.backbone", cell.backbone]),
        "--data.split_seed",
        str(cell.seed),
        "--seed_everything",
        str(cell.seed),
        "--trainer.default_root_dir",
        str(output),
        "--experiment",
        cell.experiment,
        *spec.overrides,
    ]
    if has_checkpoint(output, cell.experiment):
        command += ["--ckpt_path", "last"]
    return command


def last_line(log: Path) -> str:
    """The last non-empty line of a cell's log: fit prints user errors and tracebacks end there, and a progress
    bar's newest state is its last ``\\r``-separated segment."""
    with log.open("rb") as stream:
        stream.seek(max(0, log.stat().st_size - TAIL_BYTES))
        text = stream.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_cell(command: list[str], log: Path, show: Callable[[str], None], every: float) -> int:
    """Run ``command`` with its output in ``log`` and return its exit status; meanwhile, every ``every`` seconds,
    ``show`` the log's newest non-empty line when it changed, so a fit of hours is visibly alive."""
    shown = ""
    with log.open("w") as stream, subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT) as process:
        try:
            while True:
                try:
                    return process.wait(timeout=every)
                except subprocess.TimeoutExpired:
                    line = last_line(log)
                    if line and line != shown:
                        show(line)
                        shown = line
        except BaseException:  # Ctrl+C or a failed write: the cell must not outlive the grid
            process.kill()
            raise


def _live_line(text: str) -> None:
    """``text`` redrawn in place on stderr, cut to the terminal's width so it never wraps; ``""`` clears it."""
    width = shutil.get_terminal_size().columns - 1
    print(f"\r\x1b[K{text[:width]}", end="", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def grid_name(spec: GridSpec) -> str:
    """``<datasets>_<backbones>_seed<seeds>`` (``birds10-leaves3_cnn6_seed0-1``), the grid's folder under
    ``lightning_logs/grids/`` when no grid file names it: grids of other cells never share status files."""
    parts = [
        "-".join(Path(name).name for name in spec.datasets),
        "-".join(spec.backbones + spec.recipes),
        "seed" + "-".join(map(str, spec.seeds)),
    ]
    name = re.sub(r"[^\w.-]+", "-", "_".join(parts))
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def status_dir(output: Path, name: str) -> Path:
    """``<output>/lightning_logs/grids/<name>``: the grid's status files and cell logs, beside its runs."""
    return output / LOGS / "grids" / name


def write_status(output: Path, spec: GridSpec, cells: list[Cell]) -> None:
    """``grid_status.csv`` (one row per cell) and ``grid.json`` (the spec and the same rows), atomically."""
    rows = [{**asdict(cell), "recipe": " ".join(cell.recipe), "experiment": cell.experiment} for cell in cells]
    write_csv(output / STATUS_FILE, pd.DataFrame(rows))
    write_json(output / PLAN_FILE, {"spec": asdict(spec), "cells": rows})


def run_grid(
    spec: GridSpec,
    output: str | Path = ".",
    name: str | None = None,
    echo: Callable[[str], None] = partial(print, flush=True),
    progress: bool = False,
) -> list[Cell]:
    """Run every unfinished cell in order, one ``fit`` subprocess each; a failing cell does not stop the grid.

    Runs land in ``<output>/lightning_logs/<experiment>/version_N`` (checkpoints under ``<output>/checkpoints``,
    as fit puts them), the status files (``grid_status.csv``, ``grid.json``) in ``status_dir(output, name)``,
    ``name`` defaulting to ``grid_name(spec)``; they are rewritten after every cell, so they are current even if
    the grid is killed. Each cell's stdout and stderr go to ``logs/<experiment>.log`` there; a failure is recorded
    with the log's last line. Progress is one line per cell: position, outcome, elapsed time and the time left estimated
    from the mean duration of the cells run so far. While a cell runs, its log's newest line is shown: with
    ``progress`` redrawn in place on stderr every ``LIVE_SECONDS``, else echoed at most every ``ECHO_SECONDS``.
    """
    output = Path(output)
    status = status_dir(output, name or grid_name(spec))
    cells = plan_cells(spec)
    for cell in cells:
        metrics = finished_metrics(output, cell.experiment)
        if metrics:
            cell.status, cell.metrics = "skipped", str(metrics.resolve())
    to_run = [cell for cell in cells if cell.status == "pending"]
    echo(
        f"grid: {len(cells)} cells, {len(cells) - len(to_run)} already finished, {len(to_run)} to run"
        f" -> {output / LOGS}, status in {status}"
    )
    write_status(status, spec, cells)
    start, durations = time.monotonic(), []
    for position, cell in enumerate(to_run, 1):
        command = cell_command(cell, spec, output)
        cell.command = shlex.join(command)
        log = status / LOG_DIR / f"{cell.experiment}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cell_start = time.monotonic()
        show, every = (_live_line, LIVE_SECONDS) if progress else (echo, ECHO_SECONDS)
        cell.returncode = run_cell(command, log, lambda line: show(f"  {cell.experiment}: {line}"), every)
        if progress:
            _live_line("")
        cell.seconds = round(time.monotonic() - cell_start, 2)
        durations.append(cell.seconds)
        metrics = finished_metrics(output, cell.experiment)
        if cell.returncode == 0 and metrics:
            cell.status, cell.metrics = "done", str(metrics.resolve())
            outcome = f"done in {_clock(cell.seconds)}"
        else:
            cell.status = "failed"
            cell.error = last_line(log) or f"exit status {cell.returncode} without output"
            outcome = f"FAILED (exit {cell.returncode}): {cell.error} [log: {log}]"
        write_status(status, spec, cells)
        left = sum(durations) / len(durations) * (len(to_run) - position)
        finished = sum(other.status in ("done", "skipped") for other in cells)
        echo(
            f"[{position}/{len(to_run)}] {cell.label}: {outcome} | {finished}/{len(cells)} cells finished | "
            f"elapsed {_clock(time.monotonic() - start)} | left ~{_clock(left)}"
        )
    failed = [cell for cell in cells if cell.status == "failed"]
    echo(
        f"grid: {len(cells) - len(failed)}/{len(cells)} cells finished, {len(failed)} failed;"
        f" status in {status / STATUS_FILE}"
    )
    return cells
