"""Shared fixtures: tiny generated datasets, the real study data by path, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# The study data beside the checkout; TLBENCH_SHARED_DATA points elsewhere (a git worktree, a CI cache).
SHARED_DATA = Path(os.environ.get("TLBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]


def pytest_configure(config: pytest.Config) -> None:
    """One fresh cache folder (features, decoded images, audits) for the whole test run, shared by the fits it
    starts but never with the user's ``~/.cache/tlbench`` or an earlier run: results cannot depend on what ran
    before. A test about the cache itself points ``TLBENCH_CACHE_DIR`` elsewhere."""
    os.environ["TLBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="tlbench-test-cache-")


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """``lightning_logs/tiny_cnn1/version_0`` of a cnn1 fit on generated data, through the real CLI: the one trained
    run the command and reliability tests share (copy it before damaging it)."""
    root = tmp_path_factory.mktemp("tiny_run")
    data = make_dataset(root / "tiny")
    result = run_tlbench("fit", "--data.root", str(data), *TINY_FIT_ARGS, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "lightning_logs" / "tiny_cnn1" / "version_0"
