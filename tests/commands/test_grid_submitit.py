"""``grid --launcher submitit_local``: the grid's cells as one submitit job array of ``grid --cell K`` processes.

Two tiny cnn1 cells (alpha and beta, seed 0) run as a submitit array on this machine (the local executor: no SLURM
here) and must match the same two cells of the session's serial grid (``serial``, tests/commands/conftest.py). Each
array task is an ordinary ``--cell K`` grid process with one CPU thread, so every cell must run once and learn
exactly what the serial run learned (cnn1 on one thread is deterministic).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.commands.conftest import CELL_OVERRIDES
from tests.commands.test_grid_pool import results
from tests.conftest import make_dataset, run_cli
from tlbench.__main__ import main

GRID_ARGS = ["--datasets", "alpha,beta", "--data_dir", "data", "--backbones", "cnn1", "--output", "runs"]
EXPERIMENTS = ["alpha_cnn1_seed0", "beta_cnn1_seed0"]  # cells 1 and 2
STATUS = Path("runs/lightning_logs/grids/alpha-beta_cnn1_seed0")
SUBMITIT = ["--launcher", "submitit_local", "--cpus_per_cell", "1", "--timeout_min", "10"]


def grid(root: Path, *extra: str):
    """``python -m tlbench grid EXTRA <the two cells>`` in ``root`` with one CPU thread, as the array tasks get."""
    return run_cli("grid", *extra, *GRID_ARGS, "--", *CELL_OVERRIDES, cwd=root, env={"OMP_NUM_THREADS": "1"})


def grid_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    make_dataset(root / "data" / "alpha")
    make_dataset(root / "data" / "beta", classes=2)
    return root


def test_a_submitit_array_runs_every_cell_once_with_the_serial_results(tmp_path_factory, serial):
    root = grid_root(tmp_path_factory, "array")
    result = grid(root, *SUBMITIT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 cells, 0 already finished, 2 submitted to local" in result.stdout
    assert f"status in {STATUS / 'grid_status.csv'}" in result.stdout.splitlines()[-1]
    for experiment in EXPERIMENTS:
        assert [path.name for path in (root / "runs" / "lightning_logs" / experiment).iterdir()] == ["version_0"]
        log = (root / STATUS / "logs" / f"{experiment}.log").read_text()
        assert log.count(f"grid: {experiment} on ") == 1, f"{experiment} was run more than once"
        assert results(root / "runs", experiment) == results(serial / "runs", experiment)
    status = pd.read_csv(root / STATUS / "grid_status.csv")
    assert list(status.status) == ["done", "done"]
    assert status.pid.nunique() == 2, "each cell is its own array task, its own grid process"
    assert any((root / STATUS / "submitit").glob("*_log.out")), "submitit's task logs belong beside the grid's"
    again = grid(root, *SUBMITIT)  # a finished grid submits nothing
    assert again.returncode == 0 and "2 already finished, 0 submitted" in again.stdout, again.stderr[-3000:]


def test_the_submitit_launcher_without_submitit_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert main(["grid", "--launcher", "submitit", *GRID_ARGS]) == 2
    assert capsys.readouterr().err == "error: the submitit launcher needs submitit: pip install 'tlbench[slurm]'\n"


class HostHandler(logging.StreamHandler):
    """A handler of the process that runs the grid; ``close`` is what ``logging.shutdown`` calls to shut it down
    (absl's handler closes its stream there)."""

    def close(self) -> None:
        self.stream.close()
        super().close()


def test_the_submitit_launcher_leaves_the_host_processs_log_handlers_open(tmp_path_factory, monkeypatch, capsys):
    """submitit's import-time ``dictConfig`` shut down every handler of the process that imported it (absl's closed
    pytest's capture file and ended the test run)."""
    for name in [name for name in sys.modules if name.partition(".")[0] == "submitit"]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as by a process that never had it
    host_log = HostHandler(io.StringIO())
    logging.getLogger("host").addHandler(host_log)
    monkeypatch.chdir(grid_root(tmp_path_factory, "host"))
    try:
        assert main(["grid", "--launcher", "submitit_local", *GRID_ARGS, "--cell", "9"]) == 2  # submits nothing
        assert "--cell 9" in capsys.readouterr().err and "submitit" in sys.modules
        logging.getLogger("host").warning("still logging")
        assert host_log.stream.getvalue() == "still logging\n"
    finally:
        logging.getLogger("host").removeHandler(host_log)
    assert "SUBMITIT_LOG_LEVEL" not in os.environ
