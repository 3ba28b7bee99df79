"""``grid --launcher ray``: each unfinished cell of a grid as one Ray task on a running Ray cluster.

A task is an ordinary ``python -m tlbench grid ... --cell K`` process started by the Ray worker it landed on, in
the folder the grid was started from: the claims, the resume from ``last.ckpt`` and the status files are those of
any grid process (``tlbench.grid``), so a Ray grid, ``grid --jobs`` processes and ``grid status`` can share one
output folder. Every node must therefore see that folder at the same path (a shared file system) and have tlbench
installed in the Python that runs ``ray start`` there; the datasets are read from the same paths.

Ray places each task on a node with the cell's CPUs and GPUs free (``--cpus_per_cell``, ``--gpus_per_cell``) and
retries it when its worker or node dies; the grid process the dead worker started dies with it
(``die_with_parent``), so the retry takes the cell's claim over at once and resumes the cell from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

from tlbench.errors import TLBenchError
from tlbench.grid import (
    CLAIM_DIR,
    LOG_DIR,
    PARENT_ENV,
    POLL_SECONDS,
    WORKER_ENV,
    ArrayTask,
    Cell,
    Claims,
    GridSpec,
    Resources,
    _clock,
    _owner,
    cell_args,
    check_cell,
    grid_name,
    plan_cells,
    refresh,
    status_dir,
    summarise,
    write_status,
)

# Each task's grid process writes its own output (its lines, an error it stops on) here, under the status folder.
RAY_DIR = "ray"
# How long a HOST:PORT gets to accept a connection before the grid says nothing answers there: ray.init itself
# retries an unreachable address for minutes.
CONNECT_SECONDS = 5.0
# The task's last line says what its cell cost: CPU seconds of its grid process and fit (the worker waits for them).
CPU_SECONDS = "CPU seconds (grid + fit)"
# How often the claims of the submitted cells are read for state changes (a retry on another node, say).
WATCH_SECONDS = 2.0


class CellLost(Exception):
    """Raised by a task whose cell was killed by a signal (its fit or its grid process: the OOM killer, a node
    going down): Ray retries it (``retry_exceptions``), as it retries a task whose worker died."""


@dataclass
class RayCellTask(ArrayTask):
    """One cell's Ray task: the ``ArrayTask`` grid process, told where it runs (recorded in its claim) and which
    process it must not outlive, with its output appended to ``<status>/ray/<experiment>.out``."""

    status: str = ""  # the grid's status folder, relative to ``cwd`` when not absolute
    experiment: str = ""

    def __call__(self) -> int:
        import ray

        worker = f"ray node {ray.get_runtime_context().get_node_id()[:8]} ({ray.util.get_node_ip_address()})"
        env = {**self.env(), WORKER_ENV: worker, PARENT_ENV: str(os.getpid())}
        status = Path(self.cwd, self.status)  # the worker's own folder is not the grid's
        out = status / RAY_DIR / f"{self.experiment}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as stream:
            stream.write(f"ray: {self.experiment} on {worker}, worker pid {os.getpid()}: {shlex.join(self.args)}\n")
            stream.flush()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            returncode = subprocess.run(
                self.command(), cwd=self.cwd, env=env, stdout=stream, stderr=subprocess.STDOUT
            ).returncode
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            stream.write(f"ray: {self.experiment} ended: exit {returncode}, {cpu:.1f} {CPU_SECONDS}\n")
        claim = Claims(status / CLAIM_DIR).read(self.experiment) or {}
        killed = returncode if returncode < 0 else claim.get("returncode") or 0
        if claim.get("status") != "done" and killed < 0:
            raise CellLost(f"{self.experiment} was killed by signal {-killed} on {worker}")
        return returncode


def _run(task: RayCellTask) -> int:
    """The function Ray runs (a module-level one: Ray pickles it by reference, so workers import it)."""
    return task()


def import_ray() -> ModuleType:
    """Ray, or the one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise TLBenchError('the ray launcher needs ray: pip install "tlbench[ray]"') from None
    return ray


def connect(ray: ModuleType, address: str) -> list[dict]:
    """Join the Ray cluster at ``address`` (``auto``: ``RAY_ADDRESS`` or the cluster running on this machine) as a
    driver and return its live nodes; an address where nothing answers is one line, not minutes of retries."""
    if ":" in address and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
        except (OSError, ValueError) as error:
            raise TLBenchError(
                f"--address {address}: no Ray cluster answers there ({error}); start one with"
                " 'ray start --head --port PORT' on the head node, or pass its HOST:PORT"
            ) from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as error:
        raise TLBenchError(
            f"--address {address}: {error}; pass the HOST:PORT of a running Ray cluster ('ray status' on its head"
            " node shows it)"
        ) from None
    return [node for node in ray.nodes() if node["Alive"]]


def check_fits(nodes: list[dict], resources: Resources) -> None:
    """A cell that no node can hold would wait forever in Ray's queue: say so instead, with the largest node."""
    for name, need, option in (("CPU", resources.cpus, "--cpus_per_cell"), ("GPU", resources.gpus, "--gpus_per_cell")):
        most = max((node["Resources"].get(name, 0) for node in nodes), default=0)
        if need > most:
            raise TLBenchError(
                f"{option} {need}: no node of the Ray cluster has {need} {name}s (the largest has {most:g});"
                f" lower {option} or add a larger node"
            )


class Watch:
    """The grid's one line per state change of each submitted cell, read from the claims its tasks' grid processes
    write: running (on which node; resumed, taken over or retried after what), then done or failed, and why."""

    def __init__(self, output: Path, status: Path, cells: list[Cell], claims: Claims, echo: Callable[[str], None]):
        self.output, self.status, self.cells, self.claims, self.echo = output, status, cells, claims, echo
        # experiment -> the token of its claim when submitted (an earlier grid's)
        self.before = {cell.experiment: (claims.read(cell.experiment) or {}).get("token") for cell in cells}
        self.seen: dict[str, str] = {}  # experiment -> the token of its claim last reported
        self.ended = 0
        self.start = time.monotonic()

    def poll(self, cells: list[Cell]) -> None:
        """Report each of ``cells`` whose claim is new since the last poll."""
        for cell in cells:
            claim = self.claims.read(cell.experiment) or {}
            if not claim.get("command") or claim.get("token") in (
                self.before[cell.experiment],
                self.seen.get(cell.experiment),
            ):
                continue  # not claimed by a task yet (the command, which says whether it resumes, comes second)
            resume = ", resuming from last.ckpt" if "--ckpt_path last" in claim["command"] else ""
            retried = ""
            previous = claim.get("taken_over") or {}
            if previous and previous.get("token") != self.before[cell.experiment]:  # not an earlier grid's claim
                killed = previous.get("status") == "failed" and (previous.get("returncode") or 0) < 0
                why = f"its cell was killed by signal {-previous['returncode']}" if killed else "its worker died"
                retried = f"retried by Ray ({why} on {_owner(previous)}), "
            self.echo(f"{cell.label}: {retried}running on {_owner(claim)}{resume}")
            self.seen[cell.experiment] = claim.get("token")

    def ended_with(self, cell: Cell, total: int, lost: str = "") -> None:
        """Report ``cell``, whose task ended (``lost``: why Ray gave up on it), as the folder now says."""
        self.poll([cell])
        self.ended += 1
        refresh([cell], self.output, self.claims)
        if lost and cell.status not in ("done", "failed"):
            cell.status, cell.error = "failed", lost
        where = _owner(cell.row())
        if cell.status == "done":
            said = f"done in {_clock(cell.seconds or 0)} on {where}"
        elif cell.status == "failed":
            said = f"FAILED (exit {cell.returncode}): {cell.error} [log: {self.status / LOG_DIR / cell.experiment}.log]"
        else:
            said = f"{cell.status} elsewhere ({where})"
        finished = sum(one.status == "done" for one in self.cells)
        self.echo(
            f"[{self.ended}/{total}] {cell.label}: {said} | {finished}/{len(self.cells)} cells finished"
            f" | elapsed {_clock(time.monotonic() - self.start)}"
        )


def wait(ray: ModuleType, refs: dict, watch: Watch, retries: int) -> dict[int, str]:
    """Wait for every task of ``refs`` (ref -> cell), reporting state changes as they come; returns cell index ->
    why Ray gave up on it. Ctrl+C cancels the tasks: their workers are killed, and their grid processes with them."""
    lost: dict[int, str] = {}
    pending, due = list(refs), 0.0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            if time.monotonic() >= due:
                watch.poll([refs[ref] for ref in pending])
                due = time.monotonic() + WATCH_SECONDS
            for ref in ready:
                cell = refs[ref]
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as error:
                    cause = getattr(error, "cause", None) or error  # a task's own exception, or Ray's
                    lines = [line for line in str(cause).splitlines() if line.strip()]
                    lost[cell.index] = f"Ray gave up after {retries} retries: {lines[-1] if lines else type(cause)}"
                watch.ended_with(cell, len(refs), lost.get(cell.index, ""))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return lost


def ray_grid(
    spec: GridSpec,
    grid_args: list[str],
    fit_args: list[str],
    resources: Resources,
    output: str | Path = ".",
    name: str | None = None,
    address: str = "auto",
    retries: int = 3,
    echo: Callable[[str], None] = partial(print, flush=True),
    cell: int | None = None,
) -> list[Cell]:
    """Run every unfinished cell (only cell number ``cell`` when given) as a Ray task on the cluster at ``address``,
    wait for them, and return the cells as the folder then says, like ``run_grid``.

    Each task asks Ray for ``resources.cpus`` CPUs and ``resources.gpus`` GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``)
    and runs ``python -m tlbench grid GRID_ARGS --cell K -- FIT_ARGS`` with that many OMP threads; a task whose
    worker died or whose cell was killed by a signal is retried up to ``retries`` times, and resumes the cell.
    """
    ray = import_ray()
    output = Path(output)
    status = status_dir(output, name or grid_name(spec))
    cells = plan_cells(spec)
    check_cell(cell, cells)
    claims = Claims(status / CLAIM_DIR)
    refresh(cells, output, claims)
    write_status(status, spec, cells)
    chosen = [one for one in cells if cell in (None, one.index)]
    to_run = [one for one in chosen if one.status != "done"]
    nodes = connect(ray, address)
    try:
        check_fits(nodes, resources)
        remote = ray.remote(_run).options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=retries, retry_exceptions=[CellLost]
        )
        watch = Watch(output, status, cells, claims, echo)
        refs = {}
        for one in to_run:
            args = cell_args(grid_args, one, fit_args)
            task = RayCellTask(args, os.getcwd(), resources.cpus, status=str(status), experiment=one.experiment)
            refs[remote.remote(task)] = one
        cpus, gpus = (sum(node["Resources"].get(kind, 0) for node in nodes) for kind in ("CPU", "GPU"))
        echo(
            f"grid: {len(cells)} cells, {len(cells) - len(to_run)} already finished, {len(to_run)} submitted to the"
            f" Ray cluster at {ray.get_runtime_context().gcs_address} ({len(nodes)} nodes, {cpus:g} CPUs,"
            f" {gpus:g} GPUs; per cell {resources.cpus} CPUs, {resources.gpus} GPUs, up to {retries} retries),"
            f" task output in {status / RAY_DIR}"
        )
        for one in to_run:
            echo(f"{one.label}: queued")
        lost = wait(ray, refs, watch, retries)
    finally:
        ray.shutdown()
    refresh(cells, output, claims)
    for one in chosen:
        if one.index in lost and one.status not in ("done", "failed"):
            one.status, one.error = "failed", lost[one.index]  # Ray gave up before its grid process recorded an end
    write_status(status, spec, cells)
    summarise(chosen, status, echo)
    return chosen


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_cluster(
    folder: Path, nodes: int = 2, cpus: int = 1, env: dict | None = None, timeout: float = 300
) -> Iterator[str]:
    """A Ray cluster of ``nodes`` nodes on this machine, for the launcher's tests and benchmark or a first try:
    yields the head's address. Node ``i`` has ``cpus`` CPUs and a resource ``node<i>`` of its own (to tell where
    tasks ran); ``env`` is added to its processes' environment (its workers', its tasks'). Each node is a
    ``ray start --block`` in a session of its own, with its ports picked here (two clusters on one machine must not
    meet on a default port) and its files under ``folder``: keep that path short, Ray's unix sockets live there.
    On exit every node stops, and whatever its session still holds (a task's orphaned child) is killed."""
    port, started = free_port(), []
    try:
        for index in range(nodes):
            args = ["--head", "--port", str(port), "--include-dashboard", "false"] if index == 0 else []
            args += ["--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port())] if args else []
            args += ["--address", f"127.0.0.1:{port}"] if index else []
            started.append(_start_node(folder, index, cpus, args, env or {}, timeout))
        yield f"127.0.0.1:{port}"
    finally:
        stop_nodes(started)


def _start_node(folder: Path, index: int, cpus: int, args: list[str], env: dict, timeout: float) -> subprocess.Popen:
    log = folder / f"node{index}.log"
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args, "--num-cpus", str(cpus)]
    command += ["--resources", json.dumps({f"node{index}": 1}), "--temp-dir", str(folder)]
    command += ["--node-ip-address", "127.0.0.1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    command += ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
    folder.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_nodes([process])
            raise TLBenchError(f"ray node {index} did not start; see {log}")
        time.sleep(0.2)
    return process


def stop_nodes(processes: list[subprocess.Popen]) -> None:
    """Stop each ``ray start --block`` of ``processes`` (it stops its node), then kill, by pid, whatever is left in
    their sessions: a Ray worker's child outlives the worker on versions that do not clean up after it."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    sessions = {process.pid for process in processes}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and os.getsid(int(entry.name)) in sessions:
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
