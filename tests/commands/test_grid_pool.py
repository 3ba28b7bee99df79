"""One grid, several processes: claims, ``--jobs``, ``--list`` and ``--cell``, stale claims, ``grid status``.

Four tiny cnn1 cells (alpha and beta x seeds 0 and 1; cells 1-4 in that order: seed, then dataset) run serially
(the reference) and by two grid processes started together on one output folder, one of them with ``--jobs 2``.
cnn1 on one CPU thread is deterministic, so whichever process runs a cell, its metrics must equal the serial run's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.commands.conftest import CELL_OVERRIDES
from tests.conftest import make_dataset, run_cli, tlbench_env
from tlbench.errors import TLBenchError
from tlbench.grid import Cell, Claims, GridRun, Pool
from tlbench.rundir import finished_metrics

GRID_ARGS = [
    *("--datasets", "alpha,beta", "--data_dir", "data", "--backbones", "cnn1"),
    *("--seeds", "0,1", "--output", "runs"),
]
EXPERIMENTS = ["alpha_cnn1_seed0", "beta_cnn1_seed0", "alpha_cnn1_seed1", "beta_cnn1_seed1"]  # cells 1 to 4
STATUS = Path("runs/lightning_logs/grids/alpha-beta_cnn1_seed0-1")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def grid(root: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m tlbench grid EXTRA <the four cells>`` in ``root`` (in this process; the cells are processes of
    their own), one CPU thread unless ``env`` says otherwise."""
    return run_cli("grid", *extra, *GRID_ARGS, "--", *CELL_OVERRIDES, cwd=root, env=env or ONE_THREAD)


def grid_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    make_dataset(root / "data" / "alpha")
    make_dataset(root / "data" / "beta", classes=2)
    return root


def results(runs: Path, experiment: str) -> dict:
    """What a cell learned, per phase: validation and test accuracy and loss-like values, never timings or paths."""
    metrics = json.loads(finished_metrics(runs, experiment).read_text())
    keys = ("val_acc", "val_loss", "test_acc", "test_ece")
    return {name: {key: phase[key] for key in keys} for name, phase in metrics["phases"].items()}


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped): no process has it for the test's few seconds."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def plant_claim(root: Path, experiment: str, **claim: object) -> Path:
    """A claim as another grid process leaves it: running on this host, with the token naming its takeover."""
    path = root / STATUS / "claims" / f"{experiment}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"status": "running", "started": time.time(), "host": socket.gethostname(), "token": "planted"}
    path.write_text(json.dumps({**base, **claim}))
    return path


@dataclass
class Pair:
    root: Path
    pool_pid: int  # the process started with --jobs 2 (and OMP_NUM_THREADS=2: one thread per cell)
    outputs: list[str]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Pair:
    """Two grid processes started together on one output folder: ``--jobs 2`` and a plain one."""
    root = grid_root(tmp_path_factory, "pair")
    command = [sys.executable, "-m", "tlbench", "grid", *GRID_ARGS, "--", *CELL_OVERRIDES]
    processes = [
        subprocess.Popen(
            [*command[:4], "--jobs", "2", *command[4:]],
            cwd=root,
            env=tlbench_env({"OMP_NUM_THREADS": "2"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        subprocess.Popen(
            command, cwd=root, env=tlbench_env(ONE_THREAD), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ),
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return Pair(root, processes[0].pid, outputs)


def test_two_grid_processes_run_every_cell_exactly_once_with_the_serial_results(pair, serial):
    runs = pair.root / "runs"
    for experiment in EXPERIMENTS:
        assert [path.name for path in (runs / "lightning_logs" / experiment).iterdir()] == ["version_0"]
        log = (runs / STATUS.relative_to("runs") / "logs" / f"{experiment}.log").read_text()
        assert log.count(f"grid: {experiment} on ") == 1, f"{experiment} was run by more than one process"
        assert results(runs, experiment) == results(serial / "runs", experiment)
    started = [line for output in pair.outputs for line in output.splitlines() if ": running on " in line]
    assert len(started) == len(EXPERIMENTS)
    status = pd.read_csv(pair.root / STATUS / "grid_status.csv")
    assert set(status.status) == {"done"}
    assert status.pid.nunique() == 2, "both processes must have run cells: the claims, not chance, kept them apart"


def test_jobs_2_runs_two_cells_at_once_each_with_one_thread(pair):
    status = pd.read_csv(pair.root / STATUS / "grid_status.csv")
    pooled = status[status.pid == pair.pool_pid]
    intervals = list(zip(pooled.started, pooled.ended))
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(intervals) for b in intervals[i + 1 :]), intervals
    for experiment in pooled.experiment:
        header = (pair.root / STATUS / "logs" / f"{experiment}.log").read_text().splitlines()[0]
        assert "| OMP_NUM_THREADS=1 |" in header  # the process had 2 threads for 2 cells


def test_a_pool_splits_threads_workers_and_gpus_between_cells():
    two = Pool(2, budget=2, gpus=[])
    assert two.env(0) == two.env(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert two.fit_args([]) == ["--data.num_workers", "0"]
    assert two.fit_args(["--data.num_workers=3"]) == []  # the user's own setting stands
    gpus = Pool(4, budget=16, gpus=["2", "3"])
    assert [gpus.env(slot)["CUDA_VISIBLE_DEVICES"] for slot in range(4)] == ["2", "3", "2", "3"]
    assert gpus.env(0)["OMP_NUM_THREADS"] == "4" and gpus.fit_args([]) == ["--data.num_workers", "3"]
    assert Pool(1, budget=2, gpus=["0"]).env(0) == {} and Pool(1, budget=2).fit_args([]) == []


def test_grid_status_summarises_a_finished_grid(serial):
    result = run_cli("grid", "status", "runs", cwd=serial)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 cells, 4 done" in result.stdout
    for index, experiment in enumerate(EXPERIMENTS, 1):
        assert f"{index:>4}  {experiment}  done in 0:" in result.stdout
    one_grid = run_cli("grid", "status", str(STATUS), cwd=serial)
    assert one_grid.stdout == result.stdout


def test_cell_runs_one_cell_and_list_and_status_show_a_half_done_grid(tmp_path_factory, serial):
    root = grid_root(tmp_path_factory, "half")
    result = grid(root, "--cell", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(path.name for path in (root / "runs" / "lightning_logs").iterdir()) == ["beta_cnn1_seed0", "grids"]
    assert results(root / "runs", "beta_cnn1_seed0") == results(serial / "runs", "beta_cnn1_seed0")
    dead, host = dead_pid(), socket.gethostname()
    plant_claim(root, "alpha_cnn1_seed1", pid=dead)  # its grid died
    plant_claim(root, "beta_cnn1_seed1", pid=os.getpid())  # another grid, alive, is running it
    listed = grid(root, "--list", "true")
    assert listed.returncode == 0, listed.stderr[-2000:]
    lines = listed.stdout.splitlines()
    assert lines[0] == "   1  alpha_cnn1_seed0  pending"
    assert lines[1].startswith("   2  beta_cnn1_seed0  done in 0:")
    assert lines[2] == f"   3  alpha_cnn1_seed1  interrupted ({host} pid {dead} gone; resumes from its last.ckpt)"
    assert lines[3].startswith(f"   4  beta_cnn1_seed1  running on {host} pid {os.getpid()} since")
    status = run_cli("grid", "status", "runs", cwd=root)
    assert "4 cells, 1 pending, 1 done, 1 interrupted, 1 running" in status.stdout
    assert status.stdout.splitlines()[1:] == lines
    out_of_range = grid(root, "--cell", "5")
    assert out_of_range.returncode == 2 and "the grid has cells 1 to 4" in out_of_range.stderr


def test_a_stale_claim_is_taken_over_and_the_cell_resumes_from_its_last_ckpt(tmp_path, serial):
    shutil.copytree(serial / "data", tmp_path / "data")
    shutil.copytree(serial / "runs", tmp_path / "runs")
    experiment = "alpha_cnn1_seed1"  # cell 3: killed with its grid after its last epoch, before its tests
    (tmp_path / "runs" / "lightning_logs" / experiment / "version_0" / "metrics.json").unlink()
    owner = dead_pid()
    plant_claim(tmp_path, experiment, pid=owner)
    result = grid(tmp_path, "--cell", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"running on {socket.gethostname()} pid " in result.stdout
    assert f"resuming from last.ckpt, taken over from {socket.gethostname()} pid {owner}" in result.stdout
    assert (tmp_path / STATUS / "claims" / f"{experiment}.planted.stale").is_file()  # moved away, not overwritten
    assert [path.name for path in (tmp_path / "runs" / "lightning_logs" / experiment).iterdir()] == ["version_0"]
    assert (
        results(tmp_path / "runs", experiment)["finetune"]["test_acc"]
        == (results(serial / "runs", experiment)["finetune"]["test_acc"])
    )


def test_a_claim_silent_for_a_lease_is_taken_over_by_one_taker_and_a_live_or_done_one_never(tmp_path):
    with Claims(tmp_path, lease=60, heartbeat=3600) as owner, Claims(tmp_path, lease=60) as taker:
        owner.host = "elsewhere"  # another machine: only its heartbeat tells whether it lives
        assert owner.acquire("cell", {"status": "running"}) == (True, None)
        won, live = taker.acquire("cell", {"status": "running"})
        assert not won and live["host"] == "elsewhere"
        old = time.time() - 120
        os.utime(owner.path("cell"), (old, old))
        won, stale = taker.acquire("cell", {"status": "running"})
        assert won and stale["token"] == owner.held["cell"]
        with Claims(tmp_path, lease=60) as late:
            late.host = "third"
            assert late.acquire("cell", {"status": "running"})[0] is False  # the taker's claim is fresh
        owner.update("cell", {"status": "failed"})  # the old owner woke up: the claim is no longer its own
        assert taker.read("cell")["token"] == taker.held["cell"] and taker.read("cell")["status"] == "running"
        taker.update("cell", {"status": "done"})
        os.utime(taker.path("cell"), (old, old))
        assert owner.acquire("cell", {"status": "running"})[0] is False  # a done cell is never taken over


def test_a_claim_owner_keeps_its_claims_alive(tmp_path):
    with Claims(tmp_path, heartbeat=0.05) as owner:
        owner.acquire("cell", {"status": "running"})
        old = time.time() - 120
        os.utime(owner.path("cell"), (old, old))
        deadline = time.monotonic() + 10
        while owner.path("cell").stat().st_mtime < old + 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert owner.path("cell").stat().st_mtime > old + 60, "the heartbeat did not refresh the claim"


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_error_in_a_pool_worker_stops_the_grid_and_reaches_the_user(jobs, monkeypatch, tmp_path):
    """A worker that cannot write the status files must not die alone with a traceback while the grid goes on."""
    started = []

    def run_one(self, cell, slot):
        started.append(cell)
        raise TLBenchError(f"could not write {tmp_path}/grid_status.csv: No space left on device")

    monkeypatch.setattr(GridRun, "run_one", run_one)
    with Claims(tmp_path / "claims") as claims:
        grid = GridRun(None, tmp_path, tmp_path, [], claims, Pool(jobs, budget=2, gpus=[]), print, progress=False)
        cells = [Cell(index=i, dataset="d", data_root="d", backbone="cnn1", seed=i, recipe=[]) for i in range(6)]
        with pytest.raises(TLBenchError, match="No space left on device"):
            grid.run(cells)
    assert len(started) <= jobs, "the other workers must stop taking cells"


def test_worker_threads_echo_whole_lines(tmp_path):
    """``print`` writes a line's text and its newline separately: two cells starting at once once printed
    "beta ...: running on vm pid 29681alpha ...: running on vm pid 29681" (CI, stop 28)."""
    written: list[str] = []

    def slow_print(line: str) -> None:  # print's two writes, with the window between them widened
        written.append(line)
        time.sleep(0.01)
        written.append("\n")

    run = GridRun(None, tmp_path, tmp_path, [], None, Pool(2, budget=2), slow_print, progress=False)
    threads = [threading.Thread(target=run.echo, args=(f"cell {index}: running",)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted("".join(written).splitlines()) == [f"cell {index}: running" for index in range(8)]
