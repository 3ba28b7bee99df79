"""Shared fixtures: tiny generated datasets, the real study data by path, and a CLI runner."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
# The study data beside the checkout; TLBENCH_SHARED_DATA points elsewhere (a git worktree, a CI cache).
SHARED_DATA = Path(os.environ.get("TLBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]


def pytest_configure(config: pytest.Config) -> None:
    """One fresh cache folder (features, decoded images, audits) for the whole test run, shared by the fits it
    starts but never with the user's ``~/.cache/tlbench`` or an earlier run: results cannot depend on what ran
    before. A test about the cache itself points ``TLBENCH_CACHE_DIR`` elsewhere."""
    os.environ["TLBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="tlbench-test-cache-")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        # Each pytest-xdist worker gets its share of the cores, for torch here (ONNX Runtime follows it) and for the
        # processes it starts (tlbench_env): two workers of two threads each on two cores lose time to contention.
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.pop("TLBENCH_CACHE_DIR", ""), ignore_errors=True)


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 40) -> Path:
    """A noisy colour patch with a class-specific stripe: learnable by a tiny network in a few steps."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_dataset(root: Path, classes: int = 3, per_class: int = 10, size: int = 40, suffix: str = ".png") -> Path:
    for c in range(classes):
        for i in range(per_class):
            make_image(
                root / f"class_{c}" / f"img_{i:03d}{suffix}", COLOURS[c % len(COLOURS)], seed=c * 1000 + i, size=size
            )
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


# A fast backbone for plumbing tests: the one-layer baseline at 32 px, one epoch per phase.
TINY_FIT_ARGS = [
    "--model.backbone",
    "cnn1",
    "--model.pretrained",
    "false",
    "--model.input_size",
    "32",
    "--model.head_hidden",
    "16",
    "--model.head_epochs",
    "1",
    "--model.finetune_epochs",
    "1",
    "--model.unfreeze_blocks",
    "-1",
    "--data.batch_size",
    "8",
    "--data.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.accelerator",
    "cpu",
]


def tlbench_env(env: dict | None = None) -> dict:
    """The environment of a ``python -m tlbench`` child: this checkout first on the path, two threads."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        **(env or {}),
    }


def run_tlbench(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m tlbench ARGS`` in a fresh process, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "tlbench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=tlbench_env(env),
    )


# Python's own warning filters (no -W, no PYTHONWARNINGS): what a ``python -m tlbench`` process starts with,
# instead of the "always" filters pytest installs around each test.
PYTHON_DEFAULT_WARNINGS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, None),
    ("ignore", PendingDeprecationWarning, None),
    ("ignore", ImportWarning, None),
    ("ignore", ResourceWarning, None),
]
# Lightning's loggers: in a fresh process each gets its own stderr handler and stops propagating (their packages'
# ``__init__`` do that when the root logger has no handler, as in a command-line process but not under pytest).
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's own display of a warning (through ``warnings.formatwarning``, which tlbench sets) on stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """``python -m tlbench ARGS`` in this process: ``tlbench.__main__.main(args)`` with ``cwd`` as working
    directory, ``env`` added to the environment, stdout and stderr captured (Lightning's log lines and warnings
    included, printed as a fresh process prints them), and the exit status a process would have (an escaping
    exception prints its traceback and gives 1). Afterwards the working directory, the environment (Lightning
    sets ``PL_GLOBAL_SEED``), torch's thread count (set as a child's), the warning filters, the signal handlers
    and Lightning's log handlers are as they were.

    A process costs seconds of imports per command; use ``run_tlbench`` only where the process boundary is the
    point (a kill, Ctrl-C, DDP, the console script, a fresh interpreter's imports). ``timeout`` is accepted for
    the same call signature and not enforced: a hung command fails the test run either way."""
    import lightning_fabric  # noqa: F401  (imported before its logger is swapped: its __init__ configures it once)
    import pytorch_lightning  # noqa: F401
    import torch

    from tlbench.__main__ import main

    # What a process writing to pipes has: UTF-8 text, strict on stdout (``main`` relaxes it, as it does there),
    # a file name that is not UTF-8 escaped on stderr.
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    saved_cwd, saved_env, saved_argv = Path.cwd(), dict(os.environ), list(sys.argv)
    saved_threads = torch.get_num_threads()
    # Lightning ignores SIGINT after a Ctrl-C (for its graceful shutdown) and never puts it back; grid cells and
    # SLURM runs set SIGTERM and SIGUSR1 handlers.
    saved_signals = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    saved_loggers = [(logger.handlers[:], logger.propagate, logger.level) for logger in loggers]
    handler = logging.StreamHandler(stderr)
    os.environ.update(env or {})
    os.chdir(cwd)
    torch.set_num_threads(int(tlbench_env(env)["OMP_NUM_THREADS"]))  # a child's threads: the same numbers
    try:
        for logger in loggers:
            logger.handlers, logger.propagate = [handler], False
            logger.setLevel(logging.INFO)
        with redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in PYTHON_DEFAULT_WARNINGS:
                warnings.filterwarnings(action, category=category, module=module or "")
            warnings.showwarning = _print_warning  # not pytest's recorder: printed where the process prints it
            try:
                status = main(list(args))
            except SystemExit as exit:
                status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
                if not isinstance(exit.code, int | None):
                    print(exit.code, file=sys.stderr)
            except BaseException:  # a KeyboardInterrupt main does not handle ends the process the same way
                traceback.print_exc()
                status = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:] = saved_argv
        torch.set_num_threads(saved_threads)
        for number, action in saved_signals.items():
            signal.signal(number, action)
        for logger, (handlers, propagate, level) in zip(loggers, saved_loggers):
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
    output, errors = (stream.buffer.getvalue().decode("utf-8", "surrogateescape") for stream in (stdout, stderr))
    return subprocess.CompletedProcess(["tlbench", *args], status, output, errors)


def once_per_test_run(
    tmp_path_factory: pytest.TempPathFactory,
    worker_id: str,
    name: str,
    produce: Callable[[], T],
    encode: Callable[[T], object],
    decode: Callable[[object], T],
) -> T:
    """``produce()`` for the whole test run, also when pytest-xdist splits it over workers: the first worker to get
    here runs it and records ``encode(value)`` as JSON in the run's shared temporary folder; the others wait for
    that record and ``decode`` it. What it produces must be read-only for its users (a run folder, a path)."""
    if worker_id == "master":  # not under xdist
        return produce()
    record = tmp_path_factory.getbasetemp().parent / f"{name}.json"
    with FileLock(f"{record}.lock"):
        if not record.is_file():
            record.write_text(json.dumps(encode(produce())))
        return decode(json.loads(record.read_text()))


@pytest.fixture(scope="session")
def tiny_fit(tmp_path_factory, worker_id) -> tuple[Path, subprocess.CompletedProcess]:
    """``lightning_logs/tiny_cnn1/version_0`` of a cnn1 fit on generated data through the real CLI, and what the
    fit printed: the one trained run the command and reliability tests share (through ``tiny_run``)."""

    def fit() -> tuple[Path, subprocess.CompletedProcess]:
        root = tmp_path_factory.mktemp("tiny_run")
        data = make_dataset(root / "tiny")
        result = run_cli("fit", "--data.root", str(data), *TINY_FIT_ARGS, cwd=root)
        assert result.returncode == 0, result.stderr[-2000:]
        return root / "lightning_logs" / "tiny_cnn1" / "version_0", result

    def encode(value: tuple[Path, subprocess.CompletedProcess]) -> list:
        run, result = value
        return [str(run), result.args, result.returncode, result.stdout, result.stderr]

    def decode(value: list) -> tuple[Path, subprocess.CompletedProcess]:
        return Path(value[0]), subprocess.CompletedProcess(*value[1:])

    return once_per_test_run(tmp_path_factory, worker_id, "tiny_fit", fit, encode, decode)


@pytest.fixture(scope="session")
def tiny_run(tiny_fit) -> Path:
    """``tiny_fit``'s run directory, read-only: a test that writes into a run (predict's CSV, a damaged
    checkpoint) works on ``copy_run``'s copy. Its data is ``tiny_run.parents[2] / "tiny"``."""
    return tiny_fit[0]


def copy_run(run: Path, base: Path) -> Path:
    """``base/lightning_logs/E/version_0`` and its checkpoints, a copy of ``run`` whose metrics.json and
    config.yaml point at the copied checkpoints and run folder, and at the run's data by absolute path."""
    source_root = run.parents[2]
    for part in ("lightning_logs", "checkpoints"):
        relative = Path(part, run.parent.name, run.name)
        shutil.copytree(source_root / relative, base / relative)
    copy = base / "lightning_logs" / run.parent.name / run.name
    for name in ("metrics.json", "config.yaml"):
        text = (copy / name).read_text()
        for part in ("lightning_logs", "checkpoints"):
            text = text.replace(str(source_root / part), str(base / part))
        (copy / name).write_text(text.replace("root: tiny\n", f"root: {source_root / 'tiny'}\n"))
    return copy
