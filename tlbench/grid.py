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

Several grid processes (``--jobs`` threads in one, ``--cell K`` array jobs, grids started on several machines
sharing a file system) can work on one output folder: a cell is run by the process that created its claim file
(``Claims``), and the status files are rendered from the folder (metrics, claims), never from one process's view.
``submit_grid`` builds on that: it submits one ``--cell K`` grid process per unfinished cell as a submitit job array;
``tlbench.grid_ray`` runs each as a Ray task.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import ModuleType

import pandas as pd

from tlbench.configs import recipe_args, recipe_file
from tlbench.data.discover import images_under
from tlbench.errors import TLBenchError
from tlbench.io import read_json, write_csv, write_json
from tlbench.outputs import LOGS
from tlbench.rundir import experiment_name, finished_metrics, has_checkpoint

STATUS_FILE = "grid_status.csv"
PLAN_FILE = "grid.json"
LOG_DIR = "logs"
CLAIM_DIR = "claims"
# A grid process refreshes its claims this often; a claim silent for LEASE_SECONDS has lost its owner (one on
# another host, whose pid cannot be checked from here). The lease allows for clock skew between hosts.
HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0
# How often a running cell is checked for its end and for the grid's interruption.
POLL_SECONDS = 0.5
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
# submitit's job files (pickled tasks, each task's stdout and stderr), under the grid's status folder.
SUBMITIT_DIR = "submitit"
SUBMITIT_LOG_LEVEL = "SUBMITIT_LOG_LEVEL"  # submitit reads it once, on import
# Set by a launcher for the grid process it starts: where it runs (recorded in its claims), and the pid of the
# launcher's process, which that grid process must not outlive (see ``die_with_parent``).
WORKER_ENV = "TLBENCH_GRID_WORKER"
PARENT_ENV = "TLBENCH_GRID_PARENT"
# The fields of a stale claim that the claim taking it over keeps (as ``taken_over``): whose it was, how it ended.
TAKEN_OVER_FIELDS = ("host", "pid", "worker", "token", "status", "returncode")


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
    status: str = "pending"  # pending | running | done | failed | interrupted (its owner died; it resumes)
    seconds: float | None = None
    returncode: int | None = None
    error: str = ""
    metrics: str = ""
    command: str = ""
    host: str = ""  # the grid process that claimed it
    pid: int | None = None
    worker: str = ""  # where a launcher placed that process (``ray node <id> (<ip>)``); empty when started by hand
    started: float | None = None  # seconds since the epoch
    ended: float | None = None

    @property
    def experiment(self) -> str:
        return f"{experiment_name(self.dataset, self.backbone)}_seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.dataset} x {self.backbone} x seed {self.seed}"

    def row(self) -> dict:
        """The cell as a row of ``grid_status.csv`` and ``grid.json``."""
        return {**asdict(self), "recipe": shlex.join(self.recipe), "experiment": self.experiment}

    @classmethod
    def from_row(cls, row: dict) -> Cell:
        """The cell a ``grid.json`` row describes (``grid status`` needs no dataset folder to exist)."""
        values = {item.name: row[item.name] for item in fields(cls) if item.name in row}  # older grids lack some
        return cls(**{**values, "recipe": shlex.split(row["recipe"])})


# What a claim records about its cell, beside its owner's token (see ``Claims``).
CLAIM_FIELDS = ("status", "host", "pid", "worker", "started", "ended", "seconds", "returncode", "error", "command")


def parse_list(value: str | list | int) -> list[str]:
    """``"a,b"`` or ``[a, b]`` -> ``["a", "b"]`` (command-line values are comma-separated strings)."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def build_spec(file_values: dict, cli_values: dict) -> GridSpec:
    """Merge a grid file with command-line values; a value given on the command line wins."""
    merged = {**file_values, **{key: value for key, value in cli_values.items() if value not in (None, [])}}
    if not merged.get("datasets") or not (merged.get("backbones") or merged.get("recipes")):
        raise TLBenchError(
            "the grid needs datasets and models: pass --datasets and --backbones or --recipes, or a --grid file"
            " listing them"
        )
    try:
        seeds = [int(seed) for seed in parse_list(merged.get("seeds", 0))]
    except ValueError:
        raise TLBenchError(f"seeds must be integers, got {merged['seeds']!r}; give e.g. --seeds 0,1,2") from None
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
            f"dataset '{name}': {path} is not a folder; pass a dataset folder in --data_dir {data_dir}"
            f" ({', '.join(available) or 'it holds none'}) or a path, or download one with 'tlbench data download'"
        )
    if not images_under(path):
        raise TLBenchError(
            f"dataset '{name}': no images under {path}; put them in class folders, {path}/<class>/<image>.jpg"
            " (jpg, png, bmp, webp, tif)"
        )
    return path


def plan_cells(spec: GridSpec) -> list[Cell]:
    """Cells ordered seed, then dataset, then backbone: an interrupted grid leaves whole seeds complete."""
    roots = {}
    for name in spec.datasets:
        path = resolve_dataset(name, spec.data_dir)
        if path.resolve().name in roots:
            raise TLBenchError(
                f"two datasets are named '{path.resolve().name}', so their runs would share a folder; rename one"
                " of the dataset folders"
            )
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


def last_line(log: Path, start: int = 0) -> str:
    """The last non-empty line of a cell's log after byte ``start`` (where this attempt's output begins): fit prints
    user errors and tracebacks end there, and a progress bar's newest state is its last ``\\r``-separated segment."""
    with log.open("rb") as stream:
        stream.seek(max(start, log.stat().st_size - TAIL_BYTES))
        text = stream.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_cell(
    command: list[str],
    log: Path,
    show: Callable[[str], None],
    every: float,
    env: dict[str, str] | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Run ``command`` (``env`` added to this environment) with its output appended to ``log`` and return its exit
    status; meanwhile, every ``every`` seconds, ``show`` the log's newest non-empty line when it changed, so a fit of
    hours is visibly alive. ``cancel`` set (the grid interrupted while cells run in worker threads) kills it."""
    shown, due = "", time.monotonic() + every
    with (
        log.open("a") as stream,
        subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        ) as process,
    ):
        start = stream.tell()
        try:
            while True:
                try:
                    return process.wait(timeout=min(every, POLL_SECONDS))
                except subprocess.TimeoutExpired:
                    pass
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                if time.monotonic() >= due:
                    due += every
                    line = last_line(log, start)
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
    rows = [cell.row() for cell in cells]
    write_csv(output / STATUS_FILE, pd.DataFrame(rows))
    write_json(output / PLAN_FILE, {"spec": asdict(spec), "cells": rows})


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def die_with_parent() -> None:
    """Make this grid process end, killing its cell's ``fit`` on the way out as on Ctrl+C, when the launcher process
    named by ``PARENT_ENV`` dies (Linux: ``prctl(PR_SET_PDEATHSIG)``; SIGTERM is turned into KeyboardInterrupt).

    A Ray worker killed mid-cell leaves this process orphaned, still holding the cell's claim; Ray's retry of the
    task would then find the claim alive and skip the cell while the orphan trains on. Dying with the worker frees
    the claim at once (its pid is gone), so the retry takes it over. Recent Ray kills a dead worker's process group
    itself; this covers the older versions and a worker whose group is not cleaned up."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return
    signal.signal(signal.SIGTERM, _interrupted)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it died before prctl took effect
        raise KeyboardInterrupt


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """Exclusive claims on a grid's cells, one JSON file per cell in ``folder`` (``<status>/claims/``).

    Of all the grid processes working on one output folder, on one machine or several sharing a file system, only
    the one that created a cell's claim runs it. The create is ``os.link`` of a fully written file: exclusive like
    ``O_EXCL`` (also on NFS, where ``open(2)`` recommends it) and never visible half-written. The claim holds the
    owner's host and pid and, once the cell ended, its outcome; while the owner lives it refreshes the claims' mtime
    every ``heartbeat`` seconds. A claim is stale when its owner is gone (same host, pid dead) or silent for more
    than ``lease`` seconds (another host); a stale claim is taken over, a claim of a done cell never is.
    """

    def __init__(self, folder: Path, lease: float = LEASE_SECONDS, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.folder = folder
        self.lease = lease
        self.heartbeat = heartbeat
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.worker = os.environ.get(WORKER_ENV, "")
        self.held: dict[str, str] = {}  # experiment -> token of this process's claim
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the heartbeat: the claims of a grid that exits go stale, so its interrupted and failed cells are
        run again by the next grid process."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()

    @property
    def owner(self) -> str:
        """This process as its claims name it (see ``_owner``)."""
        return _owner({"host": self.host, "pid": self.pid, "worker": self.worker})

    def path(self, experiment: str) -> Path:
        return self.folder / f"{experiment}.json"

    def read(self, experiment: str) -> dict | None:
        """The claim on ``experiment``; None when there is none, ``{}`` when it cannot be read."""
        try:
            claim = read_json(self.path(experiment))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return claim if isinstance(claim, dict) else {}

    def stale(self, experiment: str, claim: dict) -> bool:
        """Whether ``claim`` (read from ``experiment``'s claim file) has lost its owner."""
        if claim.get("status") == "done":
            return False
        try:
            silent = time.time() - self.path(experiment).stat().st_mtime
        except FileNotFoundError:
            return False
        return silent > self.lease or (claim.get("host") == self.host and not pid_alive(int(claim.get("pid") or 0)))

    def acquire(self, experiment: str, record: dict) -> tuple[bool, dict | None]:
        """Claim ``experiment`` with ``record``: ``(True, the stale claim taken over or None)``, or ``(False, the
        claim of its live owner)``. A taker first links the stale claim to ``<experiment>.<its token>.stale``, which
        only one taker of that claim can create, then removes it: two takers never both win. The new claim keeps
        whose the old one was and how it ended, as ``taken_over``."""
        token = uuid.uuid4().hex
        path = self.path(experiment)
        staged = self.folder / f".{path.name}.{token}"
        write_json(staged, {**record, "host": self.host, "pid": self.pid, "worker": self.worker, "token": token})
        taken = None
        try:
            while True:
                try:
                    os.link(staged, path)
                    break
                except FileExistsError:
                    pass
                current = self.read(experiment)
                if current is None:
                    continue  # the stale claim was just moved away by another taker
                if not self.stale(experiment, current):
                    return False, current
                try:
                    os.link(path, self.folder / f"{experiment}.{current.get('token', 'damaged')}.stale")
                except FileExistsError:
                    return False, current  # another taker won this claim
                except FileNotFoundError:
                    continue
                path.unlink()
                taken = current
        finally:
            staged.unlink()
        with self._lock:
            self.held[experiment] = token
            if self._beat is None:
                self._beat = threading.Thread(target=self._keep_alive, name="grid-heartbeat", daemon=True)
                self._beat.start()
        if taken is not None:
            # The new claim says what it took over: a launcher that never read that claim (a Ray worker killed
            # between two of its polls) still learns that this run is a retry, and of what.
            self.update(experiment, {"taken_over": {key: taken.get(key) for key in TAKEN_OVER_FIELDS}})
        return True, taken

    def update(self, experiment: str, record: dict) -> None:
        """Merge ``record`` into this process's claim on ``experiment``; one taken over meanwhile (this process was
        stopped past the lease) belongs to its new owner and is left alone."""
        current = self.read(experiment)
        if current and current.get("token") == self.held[experiment]:
            write_json(self.path(experiment), {**current, **record})

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                held = list(self.held)
            for experiment in held:
                with suppress(OSError):
                    os.utime(self.path(experiment))


def refresh(cells: list[Cell], output: Path, claims: Claims) -> None:
    """Each cell's state as the output folder says, whichever process ran it: ``done`` when its ``metrics.json``
    is finished, else its claim's (``running``, ``failed``; ``interrupted`` when the owner is gone), else
    ``pending``. Every grid process reads the same folder, so their status files agree."""
    for cell in cells:
        claim = claims.read(cell.experiment) or {}
        for key in CLAIM_FIELDS:
            setattr(cell, key, claim.get(key, getattr(Cell, key)))
        metrics = finished_metrics(output, cell.experiment)
        if metrics:
            cell.status, cell.metrics = "done", str(metrics.resolve())
        elif cell.status == "running" and claims.stale(cell.experiment, claim):
            cell.status = "interrupted"
        elif cell.status not in ("running", "failed"):
            cell.status = "pending"


def describe(cell: Cell) -> str:
    """A cell's state in words: who runs it, how long it took, why it failed."""
    where = _owner({"host": cell.host, "pid": cell.pid, "worker": cell.worker})
    if cell.status == "running":
        return f"running on {where} since {time.strftime('%H:%M:%S', time.localtime(cell.started))}"
    if cell.status == "interrupted":
        return f"interrupted ({where} gone; resumes from its last.ckpt)"
    if cell.status == "failed":
        return f"failed on {where} (exit {cell.returncode}): {cell.error}"
    if cell.status == "done" and cell.seconds is not None:
        return f"done in {_clock(cell.seconds)} on {where}"
    return cell.status


def thread_budget() -> int:
    """The CPU threads a grid may spend: ``OMP_NUM_THREADS`` when set, else the cores this process may run on."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The CUDA devices to hand out: ``CUDA_VISIBLE_DEVICES``'s list when set, else every device torch counts."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [device.strip() for device in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if device.strip()]
    import torch  # only a pool of several cells needs it

    return [str(index) for index in range(torch.cuda.device_count())]


class Pool:
    """How ``jobs`` cells at once share the machine without oversubscribing it: each cell gets
    ``threads = budget // jobs`` CPU threads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``; torch sizes its intra-op
    pool from the former), at most ``threads - 1`` decode workers, and with GPUs one of them, round-robin by slot.
    One job leaves the cell's environment and workers as a lone ``fit`` would have them."""

    def __init__(self, jobs: int, budget: int | None = None, gpus: list[str] | None = None) -> None:
        if jobs < 1:
            raise TLBenchError(f"--jobs {jobs} is below 1; pass --jobs 1 or more")
        self.jobs = jobs
        self.threads = max(1, (budget or thread_budget()) // jobs)
        self.gpus = (visible_gpus() if jobs > 1 else []) if gpus is None else gpus

    def env(self, slot: int) -> dict[str, str]:
        """The environment cell ``slot`` (0 to ``jobs - 1``) adds to the grid's."""
        if self.jobs == 1:
            return {}
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def fit_args(self, overrides: list[str]) -> list[str]:
        """``--data.num_workers`` capped to the cell's threads, unless the grid's overrides set it themselves."""
        if self.jobs == 1 or any(arg.split("=", 1)[0] == "--data.num_workers" for arg in overrides):
            return []
        return ["--data.num_workers", str(max(0, min(8, self.threads - 1)))]


class GridRun:
    """One grid process working through ``to_run`` with ``pool.jobs`` worker threads: each claims a cell, runs it,
    records its outcome in the claim and rewrites the status files from the folder."""

    def __init__(
        self,
        spec: GridSpec,
        output: Path,
        status: Path,
        cells: list[Cell],
        claims: Claims,
        pool: Pool,
        echo: Callable[[str], None],
        progress: bool,
    ) -> None:
        self.spec, self.output, self.status, self.cells = spec, output, status, cells
        self.claims, self.pool, self._echo = claims, pool, echo
        self.echo_lock = threading.Lock()
        self.progress = progress and pool.jobs == 1  # one live line cannot show several cells
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        self.durations: list[float] = []
        self.total = 0
        self.start = time.monotonic()

    def echo(self, line: str) -> None:
        """One whole line at a time: ``print`` writes the text and its newline separately, so two worker threads
        echoing at once could otherwise glue their lines together."""
        with self.echo_lock:
            self._echo(line)

    def write_status(self) -> None:
        with self.lock:
            refresh(self.cells, self.output, self.claims)
            write_status(self.status, self.spec, self.cells)

    def run(self, to_run: list[Cell]) -> None:
        """Work through ``to_run``; the first error of any worker (a status file that cannot be written) stops the
        others, whose cells' processes are killed, and is raised here, so it reaches the user as one line."""
        queue = iter(list(to_run))
        self.total = len(to_run)
        failures: list[BaseException] = []

        def work(slot: int) -> None:
            try:
                while not self.cancel.is_set():
                    with self.lock:
                        cell = next(queue, None)
                    if cell is None:
                        return
                    self.run_one(cell, slot)
            except BaseException as error:
                failures.append(error)
                self.cancel.set()  # each other worker kills its cell's process

        if self.pool.jobs == 1:
            work(0)
        else:
            workers = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in range(self.pool.jobs)]
            for worker in workers:
                worker.start()
            try:
                for worker in workers:
                    while worker.is_alive():
                        worker.join(POLL_SECONDS)
            except BaseException:
                self.cancel.set()
                for worker in workers:
                    worker.join()
                raise
        if failures:
            raise failures[0]

    def run_one(self, cell: Cell, slot: int) -> None:
        record = {"status": "running", "started": time.time(), **{key: None for key in ("ended", "seconds")}}
        won, other = self.claims.acquire(cell.experiment, record)
        if not won:
            self.echo(f"{cell.label}: {(other or {}).get('status', 'claimed')} elsewhere ({_owner(other)})")
            return
        if finished_metrics(self.output, cell.experiment):  # finished by a process that died before recording it
            self.claims.update(cell.experiment, {"status": "done"})
            return
        command = [*cell_command(cell, self.spec, self.output), *self.pool.fit_args(self.spec.overrides)]
        env = self.pool.env(slot)
        log = self.status / LOG_DIR / f"{cell.experiment}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        threads = env.get("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "unset"))
        resume = ", resuming from last.ckpt" if "--ckpt_path" in command else ""
        taken = f", taken over from {_owner(other)}" if other else ""
        with log.open("a") as stream:
            stream.write(f"grid: {cell.experiment} on {self.claims.owner}{resume}{taken}")
            stream.write(f" | OMP_NUM_THREADS={threads} | {shlex.join(command)}\n")
            offset = stream.tell()
        self.claims.update(cell.experiment, {"command": shlex.join(command)})
        self.echo(f"{cell.label}: running on {self.claims.owner}{resume}{taken}")
        self.write_status()
        cell_start = time.monotonic()
        show, every = (_live_line, LIVE_SECONDS) if self.progress else (self.echo, ECHO_SECONDS)
        returncode = run_cell(command, log, lambda line: show(f"  {cell.experiment}: {line}"), every, env, self.cancel)
        if self.progress:
            _live_line("")
        seconds = round(time.monotonic() - cell_start, 2)
        outcome = {"status": "done", "ended": time.time(), "seconds": seconds, "returncode": returncode, "error": ""}
        if returncode != 0 or not finished_metrics(self.output, cell.experiment):
            error = last_line(log, offset) or f"exit status {returncode} without output"
            outcome.update(status="failed", error=error)
        self.claims.update(cell.experiment, outcome)
        self.write_status()
        with self.lock:
            self.durations.append(seconds)
            position = len(self.durations)
            left = sum(self.durations) / position * (self.total - position) / self.pool.jobs
            finished = sum(other.status == "done" for other in self.cells)
        said = f"done in {_clock(seconds)}"
        if outcome["status"] == "failed":
            said = f"FAILED (exit {returncode}): {outcome['error']} [log: {log}]"
        self.echo(
            f"[{position}/{self.total}] {cell.label}: {said} | {finished}/{len(self.cells)} cells finished | "
            f"elapsed {_clock(time.monotonic() - self.start)} | left ~{_clock(left)}"
        )


def _owner(claim: dict | None) -> str:
    """Who holds a claim, in words: ``host pid N``, and where its launcher placed it (``(ray node ...)``)."""
    claim = claim or {}
    worker = f" ({claim['worker']})" if claim.get("worker") else ""
    return f"{claim.get('host', '?')} pid {claim.get('pid', '?')}{worker}"


def grid_cells(spec: GridSpec, output: Path, name: str | None, lease: float = LEASE_SECONDS) -> list[Cell]:
    """Every cell of the grid with its state read from ``output`` (``--list``)."""
    cells = plan_cells(spec)
    refresh(cells, output, Claims(status_dir(output, name or grid_name(spec)) / CLAIM_DIR, lease))
    return cells


def run_grid(
    spec: GridSpec,
    output: str | Path = ".",
    name: str | None = None,
    echo: Callable[[str], None] = partial(print, flush=True),
    progress: bool = False,
    jobs: int = 1,
    cell: int | None = None,
    lease: float = LEASE_SECONDS,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> list[Cell]:
    """Run every unfinished cell (only cell number ``cell`` when given), ``jobs`` at once, one ``fit`` subprocess
    each; a failing cell does not stop the grid. Returns the cells run for (all, or cell ``cell``), as the folder
    says at the end.

    Runs land in ``<output>/lightning_logs/<experiment>/version_N`` (checkpoints under ``<output>/checkpoints``,
    as fit puts them), the status files (``grid_status.csv``, ``grid.json``) in ``status_dir(output, name)``,
    ``name`` defaulting to ``grid_name(spec)``; they are rewritten after every cell, so they are current even if
    the grid is killed. Any number of grid processes may share ``output``: each cell is claimed (``Claims``), so it
    runs once, and a cell whose owner died is taken over and resumed. Each cell's stdout and stderr go to
    ``logs/<experiment>.log`` there, after a line naming the process that ran it; a failure is recorded with the
    log's last line. Progress is one line per change of a cell's state: queued, running (on which host and pid),
    done (how long, cells finished, elapsed, time left estimated from the mean cell duration) or failed (why).
    While a cell runs, its log's newest line is shown: with ``progress`` (and one job) redrawn in place on stderr
    every ``LIVE_SECONDS``, else echoed at most every ``ECHO_SECONDS``.
    """
    output = Path(output)
    status = status_dir(output, name or grid_name(spec))
    cells = plan_cells(spec)
    check_cell(cell, cells)
    pool = Pool(jobs)
    with Claims(status / CLAIM_DIR, lease, heartbeat) as claims:
        run = GridRun(spec, output, status, cells, claims, pool, echo, progress)
        run.write_status()
        chosen = [one for one in cells if cell in (None, one.index)]
        to_run = [one for one in chosen if one.status != "done"]
        echo(
            f"grid: {len(cells)} cells, {len(cells) - len(to_run)} already finished, {len(to_run)} to run"
            f" ({jobs} at once) -> {output / LOGS}, status in {status}"
        )
        for one in to_run:
            echo(f"{one.label}: queued")
        run.run(to_run)
        run.write_status()
    summarise(chosen, status, echo)
    return chosen


def check_cell(cell: int | None, cells: list[Cell]) -> None:
    """A ``--cell`` number out of range is a typing mistake: say which numbers exist rather than run nothing."""
    if cell is not None and not 1 <= cell <= len(cells):
        raise TLBenchError(
            f"--cell {cell}: the grid has cells 1 to {len(cells)}; pass one of those (--list shows them)"
        )


def summarise(chosen: list[Cell], status: Path, echo: Callable[[str], None]) -> None:
    """The grid's last line, whichever launcher ran it: how many of ``chosen`` finished, failed, run elsewhere."""
    failed = [one for one in chosen if one.status == "failed"]
    elsewhere = [one for one in chosen if one.status == "running"]
    echo(
        f"grid: {len(chosen) - len(failed) - len(elsewhere)}/{len(chosen)} cells finished, {len(failed)} failed"
        f"{f', {len(elsewhere)} running elsewhere' if elsewhere else ''}; status in {status / STATUS_FILE}"
    )


@dataclass
class Resources:
    """What each array task of ``submit_grid`` asks the scheduler for: one cell's CPUs, GPUs and time."""

    cpus: int = 4
    gpus: int = 0
    timeout_min: int = 120
    partition: str | None = None


@dataclass
class ArrayTask:
    """One array task: ``python -m tlbench ARGS`` (ARGS a ``grid ... --cell K -- FIT_ARGS``) run by the Python of
    the node the task landed on, in ``cwd``, where the grid was started, so relative paths mean what they meant
    there, with ``threads`` OMP/MKL threads (SLURM grants CPUs but sets no thread count). It returns the exit status
    instead of raising: a failed cell is recorded in its claim, as by any grid process."""

    args: list[str]
    cwd: str
    threads: int

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tlbench", *self.args]

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def __call__(self) -> int:
        return subprocess.run(self.command(), cwd=self.cwd, env=self.env()).returncode


def cell_args(grid_args: list[str], cell: Cell, fit_args: list[str]) -> list[str]:
    """``grid GRID_ARGS --cell K -- FIT_ARGS``: what a launcher's task runs for ``cell``, a grid process of its own."""
    return ["grid", *grid_args, "--cell", str(cell.index), "--", *fit_args]


def _import_submitit() -> ModuleType:
    """submitit configures logging as it is imported (``logging.config.dictConfig``), which shuts down every handler
    the process already has: a notebook's or host application's log file stops being written, and a handler that owns
    its stream closes it. Imported with its own ``SUBMITIT_LOG_LEVEL=NOCONFIG`` switch (unless the user set a level),
    its logger adds no handlers and its records reach the host's; the array tasks, fresh processes, configure it as
    usual."""
    user_level = os.environ.get(SUBMITIT_LOG_LEVEL)
    os.environ[SUBMITIT_LOG_LEVEL] = user_level or "NOCONFIG"
    try:
        import submitit
    except ImportError:
        raise TLBenchError("the submitit launcher needs submitit: pip install 'tlbench[slurm]'") from None
    finally:
        if user_level is None:
            del os.environ[SUBMITIT_LOG_LEVEL]
    return submitit


def submit_grid(
    spec: GridSpec,
    grid_args: list[str],
    fit_args: list[str],
    resources: Resources,
    output: str | Path = ".",
    name: str | None = None,
    cluster: str | None = None,
    echo: Callable[[str], None] = partial(print, flush=True),
    cell: int | None = None,
) -> list[Cell]:
    """Submit every unfinished cell (only cell number ``cell`` when given) as one submitit job array, wait for it,
    and return the cells as the folder then says, like ``run_grid``.

    Each task is ``python -m tlbench grid GRID_ARGS --cell K -- FIT_ARGS``, the options this grid was given: the
    claims, resume and status files stay those of any grid process, so array tasks, ``grid --jobs`` processes and
    ``grid status`` can share one grid. ``cluster`` is submitit's: None picks SLURM where ``sbatch`` exists, else runs
    the tasks as local processes; ``"local"`` always does. submitit's files go to ``<status>/submitit/``.
    """
    submitit = _import_submitit()
    output = Path(output)
    status = status_dir(output, name or grid_name(spec))
    cells = plan_cells(spec)
    check_cell(cell, cells)
    with Claims(status / CLAIM_DIR) as claims:
        refresh(cells, output, claims)
        write_status(status, spec, cells)
    chosen = [one for one in cells if cell in (None, one.index)]
    to_run = [one for one in chosen if one.status != "done"]
    executor = submitit.AutoExecutor(folder=status / SUBMITIT_DIR, cluster=cluster)
    executor.update_parameters(
        name=f"grid-{status.name}",
        cpus_per_task=resources.cpus,
        gpus_per_node=resources.gpus,
        timeout_min=resources.timeout_min,
        **({"slurm_partition": resources.partition} if resources.partition else {}),
    )
    jobs = []
    if to_run:
        with executor.batch():
            for one in to_run:
                jobs.append(
                    executor.submit(ArrayTask(cell_args(grid_args, one, fit_args), os.getcwd(), resources.cpus))
                )
    echo(
        f"grid: {len(cells)} cells, {len(cells) - len(to_run)} already finished, {len(to_run)} submitted to"
        f" {executor.cluster} ({', '.join(job.job_id for job in jobs) or 'no jobs'}), logs in {status / SUBMITIT_DIR}"
    )
    lost = {}
    for one, job in zip(to_run, jobs):
        try:
            echo(f"{one.label}: submitit job {job.job_id} ended, exit {job.result()}")
        except submitit.core.utils.UncompletedJobError:
            lost[one.index] = f"submitit job {job.job_id} {job.state}: see {job.paths.stderr}"
            echo(f"{one.label}: {lost[one.index]}")
    with Claims(status / CLAIM_DIR) as claims:
        refresh(cells, output, claims)
    for one in chosen:
        if one.index in lost and one.status not in ("done", "failed"):
            one.status, one.error = "failed", lost[one.index]  # killed (timeout, cancelled) before its grid recorded it
    write_status(status, spec, cells)
    summarise(chosen, status, echo)
    return chosen


def read_grid(folder: str | Path) -> list[tuple[Path, list[Cell]]]:
    """``(status folder, cells as the output folder says now)`` of the grid whose status folder is ``folder``,
    or of every grid under ``<folder>/lightning_logs/grids/``: what ``grid status`` shows, while grids run."""
    folder = Path(folder)
    plans = sorted(folder.glob(PLAN_FILE)) or sorted(folder.glob(f"{LOGS}/grids/*/{PLAN_FILE}"))
    if not plans:
        raise TLBenchError(
            f"no grid under {folder}: expected {folder}/{LOGS}/grids/<grid>/{PLAN_FILE}; pass the --output folder"
            " the grid ran with (tlbench grid status OUTPUT)"
        )
    grids = []
    for plan in plans:
        cells = [Cell.from_row(row) for row in read_json(plan)["cells"]]
        refresh(cells, plan.resolve().parents[3], Claims(plan.parent / CLAIM_DIR))
        grids.append((plan.parent, cells))
    return grids
