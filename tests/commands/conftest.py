"""Runs shared by the command tests: one tiny grid (grid, report); the tiny trained run is ``tests/conftest.py``'s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, TINY_FIT_ARGS, make_dataset, once_per_test_run, run_cli
from tlbench.rundir import is_finished

# TINY_FIT_ARGS for every cell, minus the backbone the grid sets per cell.
_BACKBONE = TINY_FIT_ARGS.index("--model.backbone")
CELL_OVERRIDES = TINY_FIT_ARGS[:_BACKBONE] + TINY_FIT_ARGS[_BACKBONE + 2 :]
DATASETS, BACKBONES, SEEDS = ("alpha", "beta"), ("cnn1", "cnn6"), (0, 1)
EXPERIMENTS = [f"{d}_{b}_seed{s}" for d in DATASETS for b in BACKBONES for s in SEEDS]
# Where the grid's status lands under its --output: lightning_logs/grids/<datasets>_<backbones>_seed<seeds>/.
GRID_STATUS = Path("lightning_logs/grids/alpha-beta_cnn1-cnn6_seed0-1/grid_status.csv")


@dataclass
class GridStudy:
    root: Path
    runs: Path
    killed_after: dict[str, int]  # experiment -> metrics.json mtime (ns) of the cells finished before the kill
    rerun: subprocess.CompletedProcess


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def finished_cells(runs: Path) -> dict[str, int]:
    """experiment -> mtime (ns) of its finished metrics.json: the mtime proves a skipped cell was not rerun."""
    return {
        path.parents[1].name: path.stat().st_mtime_ns
        for path in runs.glob("lightning_logs/*/version_*/metrics.json")
        if is_finished(path)
    }


@pytest.fixture(scope="session")
def grid_study(tmp_path_factory, worker_id) -> GridStudy:
    """Start the grid, SIGKILL its process group once the first cell finished, then rerun it to the end."""

    def encode(study: GridStudy) -> list:
        result = study.rerun
        return [
            str(study.root),
            str(study.runs),
            study.killed_after,
            result.args,
            result.returncode,
            result.stdout,
            result.stderr,
        ]

    def decode(value: list) -> GridStudy:
        return GridStudy(Path(value[0]), Path(value[1]), value[2], subprocess.CompletedProcess(*value[3:]))

    return once_per_test_run(
        tmp_path_factory, worker_id, "grid_study", partial(_grid_study, tmp_path_factory), encode, decode
    )


def _grid_study(tmp_path_factory) -> GridStudy:
    root = tmp_path_factory.mktemp("grid")
    make_dataset(root / "data" / "alpha")
    make_dataset(root / "data" / "beta", classes=2)
    args = [
        "grid",
        "--datasets",
        ",".join(DATASETS),
        "--data_dir",
        "data",
        "--backbones",
        ",".join(BACKBONES),
        "--seeds",
        ",".join(map(str, SEEDS)),
        "--output",
        "runs",
        "--",
        *CELL_OVERRIDES,
    ]
    runs = root / "runs"
    with open(root / "killed_grid.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tlbench", *args],
            cwd=root,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not finished_cells(runs) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_after = finished_cells(runs)
    assert 0 < len(killed_after) < len(EXPERIMENTS), "the kill must land mid-grid"
    # The rerun works through the rest two cells at a time, one thread each (the serial path: test_grid_pool.py).
    rerun = [*args[: args.index("--")], "--jobs", "2", *args[args.index("--") :]]
    return GridStudy(root, runs, killed_after, run_cli(*rerun, cwd=root, env={"OMP_NUM_THREADS": "2"}))


def cell_metrics(study: GridStudy) -> pd.Series:
    """experiment -> absolute path of the metrics.json the grid recorded for it."""
    return pd.read_csv(study.runs / GRID_STATUS).set_index("experiment").metrics


@pytest.fixture(scope="session")
def serial(tmp_path_factory, worker_id) -> Path:
    """The four tiny cells of test_grid_pool's grid run by one plain grid process: the reference every other way of
    running them (``--jobs``, two processes, Ray) must reproduce. Tests read it; one that changes it copies it."""
    from tests.commands.test_grid_pool import grid, grid_root  # that module's grid helpers, which import this one

    def run() -> Path:
        root = grid_root(tmp_path_factory, "serial")
        result = grid(root)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return root

    return once_per_test_run(tmp_path_factory, worker_id, "serial", run, str, Path)
