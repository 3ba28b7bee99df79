"""``grid --launcher ray`` on a real two-node Ray cluster on this machine, with a worker and a fit killed mid-cell.

The head (``ray start --head``) and a second node (``ray start --address``) have one CPU each and a resource of
their own, so the grid's four tiny cnn1 cells (one CPU each) run two at a time, one per node. The test kills the
Ray worker running one cell and the fit of another: Ray must retry both tasks, the retries take the cells' claims
over, and every cell must end with exactly what the serial run learned (cnn1 on one thread is deterministic).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytest

from tests.commands.conftest import CELL_OVERRIDES
from tests.commands.test_grid_pool import EXPERIMENTS, GRID_ARGS, ONE_THREAD, STATUS, grid_root, results
from tests.conftest import run_cli, run_tlbench, tlbench_env
from tlbench.__main__ import main
from tlbench.grid import PARENT_ENV, Cell, Claims
from tlbench.grid_ray import Watch, free_port, local_cluster, stop_nodes

T = TypeVar("T")
NO_STATS = {"RAY_USAGE_STATS_ENABLED": "0"}
DEADLINE = 300  # seconds any one wait may take on a busy machine


def wait_for(what: str, ready: Callable[[], T], timeout: float = DEADLINE) -> T:
    """Poll ``ready()`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (read from /proc: no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent_of(int(entry.name)) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Cluster:
    address: str
    nodes: dict[str, str]  # the node's own resource (node0: the head, node1) -> its node id


def node_ids(address: str) -> dict[str, str]:
    """Resource ``node<i>`` -> node id, of the live nodes (asked in a process of its own, as any Ray driver)."""
    query = (
        "import json, ray, sys; ray.init(address=sys.argv[1], log_to_driver=False);"
        "print(json.dumps([n['Resources'] | {'id': n['NodeID']} for n in ray.nodes() if n['Alive']]))"
    )
    listed = subprocess.run(
        [sys.executable, "-c", query, address], capture_output=True, text=True, env=tlbench_env(NO_STATS), timeout=60
    )
    nodes = json.loads(listed.stdout or "[]")
    return {name: node["id"] for node in nodes for name in node if re.fullmatch(r"node\d+", name)}


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    pytest.importorskip("ray")
    folder = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's unix sockets live under it
    try:
        with local_cluster(folder, nodes=2, cpus=1, env=tlbench_env({**ONE_THREAD, **NO_STATS})) as address:
            nodes = wait_for("both nodes to join", lambda: (lambda ids: len(ids) == 2 and ids)(node_ids(address)))
            yield Cluster(address, nodes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def claim(root: Path, experiment: str) -> dict:
    try:
        return json.loads((root / STATUS / "claims" / f"{experiment}.json").read_text())
    except (OSError, ValueError):  # not there yet, or being replaced
        return {}


def has_checkpoint(root: Path, experiment: str) -> bool:
    return any((root / "runs" / "checkpoints" / experiment).glob("*/last.ckpt"))


def test_a_ray_grid_runs_on_both_nodes_survives_killed_workers_and_learns_what_the_serial_run_learned(
    cluster, serial, tmp_path_factory
):
    root = grid_root(tmp_path_factory, "ray")
    command = [sys.executable, "-m", "tlbench", "grid", "--launcher", "ray", "--address", cluster.address]
    command += ["--cpus_per_cell", "1", *GRID_ARGS, "--", *CELL_OVERRIDES]
    with (root / "grid.out").open("w") as out:
        driver = subprocess.Popen(
            command, cwd=root, env=tlbench_env({**ONE_THREAD, **NO_STATS}), stdout=out, stderr=out
        )
    try:
        # The first cell to start: kill the Ray worker running it (the parent of the cell's grid process).
        worker_cell = wait_for("a cell to start", lambda: next((e for e in EXPERIMENTS if claim(root, e)), None))
        grid_pid = claim(root, worker_cell)["pid"]
        worker = parent_of(grid_pid)
        assert Path(f"/proc/{worker}/cmdline").read_bytes().startswith(b"ray::"), "not a Ray worker"
        worker_checkpointed = has_checkpoint(root, worker_cell)
        os.kill(worker, signal.SIGKILL)
        # Another cell: kill its fit once it runs (its grid process records the kill; Ray retries the task).
        fit_cell, fit = wait_for(
            "another cell's fit",
            lambda: next(
                (
                    (e, children[0])
                    for e in EXPERIMENTS
                    if e != worker_cell and claim(root, e).get("command") and claim(root, e).get("status") == "running"
                    for children in [children_of(claim(root, e)["pid"])]
                    if children
                ),
                None,
            ),
        )
        fit_checkpointed = has_checkpoint(root, fit_cell)
        os.kill(fit, signal.SIGKILL)
        driver.wait(DEADLINE * 2)
    finally:
        if driver.poll() is None:
            driver.kill()
    output = (root / "grid.out").read_text()
    assert driver.returncode == 0, output[-5000:]
    assert not alive(grid_pid), "the killed worker's grid process outlived it"
    assert "retried by Ray (its worker died on " in output, output
    assert "retried by Ray (its cell was killed by signal 9 on " in output, output
    assert "4 submitted to the Ray cluster" in output and "(2 nodes, 2 CPUs, 0 GPUs;" in output
    assert "grid: 4/4 cells finished, 0 failed" in output.splitlines()[-1]
    # Killed before any checkpoint, a cell restarts from scratch and must learn what the serial run learned
    # (resuming from last.ckpt is the claims' business, tested in test_grid_pool).
    assert not (worker_checkpointed or fit_checkpointed), "a kill landed after a checkpoint: not a clean restart"
    for experiment in EXPERIMENTS:
        log = (root / STATUS / "logs" / f"{experiment}.log").read_text()
        attempts = 2 if experiment in (worker_cell, fit_cell) else 1
        assert log.count(f"grid: {experiment} on ") == attempts, log[-3000:]
        if attempts == 2:  # the retry took the dead grid process's claim over (a stale one: its pid is gone)
            assert ", taken over from " in log.split(f"grid: {experiment} on ")[2].splitlines()[0]
        assert results(root / "runs", experiment) == results(serial / "runs", experiment), experiment
    status = pd.read_csv(root / STATUS / "grid_status.csv")
    assert set(status.status) == {"done"}
    nodes = {name: f"ray node {node_id[:8]} " for name, node_id in cluster.nodes.items()}
    for name, worker_name in nodes.items():
        assert status.worker.str.startswith(worker_name).any(), f"no cell ran on the {name} node: {list(status.worker)}"
    shown = run_cli("grid", "status", "runs", cwd=root)
    assert "4 cells, 4 done" in shown.stdout and "(ray node " in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.parametrize(
    ("first_end", "said"),
    [({}, "its worker died"), ({"status": "failed", "returncode": -9}, "its cell was killed by signal 9")],
)
def test_a_retry_is_reported_even_when_the_watch_never_saw_the_first_attempt(first_end, said, tmp_path):
    """A worker killed within a poll of its start (the CI failure of stop 29): the retry's own claim tells."""
    cell = Cell(index=0, dataset="alpha", data_root="alpha", backbone="cnn1", seed=0, recipe=[])
    said_lines: list[str] = []
    with Claims(tmp_path) as claims:
        watch = Watch(tmp_path, tmp_path, [cell], claims, said_lines.append)
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        with Claims(tmp_path) as first, Claims(tmp_path) as retry:
            first.pid, first.worker, retry.worker = int(gone.stdout), "ray node aaaa", "ray node bbbb"
            first.acquire(cell.experiment, {"status": "running"})
            first.update(cell.experiment, {"command": "tlbench fit", **first_end})
            assert retry.acquire(cell.experiment, {"status": "running"})[0]  # its owner is gone: taken over
            retry.update(cell.experiment, {"command": "tlbench fit"})
            watch.poll([cell])
            watch.poll([cell])  # the same claim is reported once
    host = socket.gethostname()
    assert said_lines == [
        f"alpha x cnn1 x seed 0: retried by Ray ({said} on {host} pid {gone.stdout.strip()} (ray node aaaa)),"
        f" running on {host} pid {os.getpid()} (ray node bbbb)"
    ]


def test_a_grid_process_dies_with_the_launcher_process_that_started_it(tmp_path_factory):
    """What makes a Ray retry safe on any Ray version: the killed worker's grid process, and its fit, end at once
    (its claim is then stale, and the retry takes it over) instead of training on beside the retry."""
    root = grid_root(tmp_path_factory, "orphan")
    launcher = (
        "import os, subprocess, sys;"
        f"os.environ[{PARENT_ENV!r}] = str(os.getpid());"
        "subprocess.run([sys.executable, '-m', 'tlbench', 'grid', *sys.argv[1:]])"
    )
    command = [sys.executable, "-c", launcher, *GRID_ARGS, "--cell", "1", "--", *CELL_OVERRIDES]
    process = subprocess.Popen(command, cwd=root, env=tlbench_env(ONE_THREAD), start_new_session=True)
    try:
        wait_for("the cell's fit to start", lambda: claim(root, EXPERIMENTS[0]).get("command"))
        grid_pid = claim(root, EXPERIMENTS[0])["pid"]
        fits = wait_for("the fit process", lambda: children_of(grid_pid))
        process.kill()
        process.wait()
        wait_for("the grid process to die with its launcher", lambda: not alive(grid_pid), timeout=30)
        wait_for("its fit to die with it", lambda: not any(alive(pid) for pid in fits), timeout=30)
    finally:
        stop_nodes([process])
    assert claim(root, EXPERIMENTS[0])["status"] == "running"  # left for a taker: its owner is gone


def test_a_cell_bigger_than_every_node_is_refused_in_one_line(cluster, tmp_path_factory):
    ray = ["--launcher", "ray", "--address", cluster.address, "--cpus_per_cell", "2"]
    result = run_tlbench("grid", *ray, *GRID_ARGS, cwd=grid_root(tmp_path_factory, "big"), env=NO_STATS)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: --cpus_per_cell 2: no node of the Ray cluster has 2 CPUs (the largest has 1);"
        " lower --cpus_per_cell or add a larger node"
    )


def test_an_address_where_no_cluster_answers_is_one_line(tmp_path_factory, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.chdir(grid_root(tmp_path_factory, "nowhere"))
    port = free_port()  # nothing listens there
    assert main(["grid", "--launcher", "ray", "--address", f"127.0.0.1:{port}", *GRID_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --address 127.0.0.1:{port}: no Ray cluster answers there (") and err.count("\n") == 1


def test_the_ray_launcher_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["grid", "--launcher", "ray", *GRID_ARGS]) == 2
    assert capsys.readouterr().err == 'error: the ray launcher needs ray: pip install "tlbench[ray]"\n'
