"""A fit interrupted at any step and resumed with ``--ckpt_path last`` is the same run as the uninterrupted fit with
the same seed: the same losses and metrics epoch by epoch, the same test predictions (issue 22, items 4 and 10).

Every interruption is real, of a ``python -m tlbench fit`` process, at a step drawn from a seeded generator, and is
triggered from inside the run by a callback of tests/helpers.py (never by timing): SIGKILL halfway through writing
``last.ckpt`` (the previous one must still load), SIGKILL at a training step, and Ctrl-C inside an epoch (which
writes a mid-epoch ``last.ckpt``, so the training loader's position matters too).
"""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import TINY_FIT_ARGS, make_dataset, run_cli, run_tlbench, tlbench_env
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.transforms import Preprocessing

RUN = ("lightning_logs", "tiny_cnn1", "version_0")
CHECKPOINTS = ("checkpoints", "tiny_cnn1", "version_0")
# Two head epochs on cached features, then two fine-tune epochs on augmented images, with dropout and Mixup: every
# random stream a fit draws from. 21 training images in batches of 8 make 3 steps an epoch, 12 in all; last.ckpt is
# first written at the end of the head phase (after step 6), then after every epoch.
ARGS = [*TINY_FIT_ARGS, "--model.head_epochs", "2", "--model.finetune_epochs", "2", "--model.mixup", "0.4"]
STEPS_PER_EPOCH = 3
TOTAL_STEPS = 12
# What differs between any two runs, interrupted or not: wall times and the run's own folders.
VOLATILE = {"seconds", "val_seconds", "train_seconds", "best_ckpt", "run_dir", "checkpoint_dir"}


def fit(data: Path, cwd: Path, *extra: str, run=run_cli) -> subprocess.CompletedProcess:
    """A fit of ``ARGS``, in this process unless ``run`` is ``run_tlbench`` (a fit that gets killed)."""
    return run("fit", "--data.root", str(data), *ARGS, *extra, cwd=cwd)


def without_volatile(value):
    if isinstance(value, dict):
        return {key: without_volatile(item) for key, item in value.items() if key not in VOLATILE}
    return value


def assert_same_run(run: Path, reference: Path, cut_epoch: int | None = None) -> None:
    """Per-epoch losses and accuracies, metrics.json (less times and paths) and every predictions CSV, exactly.

    Of an epoch cut by a mid-epoch resume (``cut_epoch``) the train loss and accuracy are left out: Lightning keeps
    an epoch's running averages in no checkpoint, so the resumed run averages the batches after the resume only.
    """
    history, expected = (
        pd.read_csv(path / "history.csv").drop(columns=["seconds", "val_seconds"]) for path in (run, reference)
    )
    for table in (history, expected):
        table.loc[table.epoch == cut_epoch, ["train_loss", "train_acc"]] = 0.0
    assert history.to_dict("records") == expected.to_dict("records")
    metrics, expected = (without_volatile(json.loads((path / "metrics.json").read_text())) for path in (run, reference))
    assert metrics == expected
    names = sorted(path.name for path in reference.glob("predictions_*.csv"))
    assert names == sorted(path.name for path in run.glob("predictions_*.csv")) and names
    for name in names:
        assert (run / name).read_text() == (reference / name).read_text(), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """The generated dataset and the run folder of the fit every interrupted one must reproduce."""
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "tiny")
    (root / "uninterrupted").mkdir()
    result = fit(data, root / "uninterrupted")
    assert result.returncode == 0, result.stderr[-3000:]
    return data, root.joinpath("uninterrupted", *RUN)


def test_killed_while_writing_a_checkpoint_then_at_a_random_step_resumes_to_the_uninterrupted_run(
    uninterrupted, tmp_path
):
    data, reference = uninterrupted
    checkpoints = tmp_path.joinpath(*CHECKPOINTS)
    killed = fit(
        data,
        tmp_path,
        "--trainer.callbacks+=tests.helpers.KillDuringCheckpointWrite",
        "--trainer.callbacks.nth=2",
        run=run_tlbench,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(list(checkpoints.glob("last.ckpt.*.partial"))) == 1, "the kill must land inside the write"
    previous = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert previous["epoch"] == 1, "the half-written checkpoint must leave the one before it in place"

    # Killed again inside the last epoch, after the resumed run wrote a checkpoint of its own: a resumed run resumed.
    step = random.Random(22).randint(3 * STEPS_PER_EPOCH + 1, TOTAL_STEPS - 1)
    killed = fit(
        data,
        tmp_path,
        "--ckpt_path",
        "last",
        "--trainer.callbacks+=tests.helpers.KillAtStep",
        f"--trainer.callbacks.step={step}",
        run=run_tlbench,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    # Finished with loader workers: each image's augmentation follows the seed, not the worker that loads it.
    resumed = fit(data, tmp_path, "--ckpt_path", "last", "--data.num_workers", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path.joinpath(*RUN), reference)


def test_ctrl_c_inside_an_epoch_resumes_at_the_next_batch_to_the_uninterrupted_run(uninterrupted, tmp_path):
    data, reference = uninterrupted
    # After a step that is not its epoch's last: last.ckpt then holds a part of an epoch (from the seed, one of the
    # head phase, whose epochs on cached features otherwise write no last.ckpt).
    step = random.Random(22).choice([s for s in range(1, TOTAL_STEPS) if s % STEPS_PER_EPOCH])
    marker = tmp_path / "paused"
    command = [sys.executable, "-m", "tlbench", "fit", "--data.root", str(data), *ARGS]
    command += ["--trainer.callbacks+=tests.helpers.PauseAtStep", f"--trainer.callbacks.step={step}"]
    command += [f"--trainer.callbacks.marker={marker}"]
    log = tmp_path / "fit.log"
    with log.open("w") as stream:  # a file, not a pipe: a full pipe would block the child
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=tlbench_env(),
            stdout=stream,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # see test_fit_faults: `pytest &`
        )
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), f"training never reached step {step}: {log.read_text()[-2000:]}"
    process.send_signal(signal.SIGINT)  # while the run waits after the step
    assert process.wait(timeout=120) == 130, log.read_text()[-2000:]
    lines = log.read_text().strip().splitlines()
    assert "Traceback" not in log.read_text() and lines[-1] == "interrupted", lines[-5:]
    assert lines[-2].startswith("progress saved to ") and f"step {step}); resume with --ckpt_path last" in lines[-2]
    last = torch.load(tmp_path.joinpath(*CHECKPOINTS, "last.ckpt"), map_location="cpu", weights_only=False)
    assert last["global_step"] == step

    resumed = fit(data, tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path.joinpath(*RUN), reference, cut_epoch=step // STEPS_PER_EPOCH)


def test_training_batches_follow_the_seed_and_epoch_whatever_the_workers_and_a_resume_inside_the_epoch(tiny_dataset):
    """The loader alone, in-process: what the fits above rely on, quick to diagnose."""

    def loader(workers: int, epoch: int = 1):
        data = ImageFolderDataModule(str(tiny_dataset), num_workers=workers, batch_size=4)
        data.preprocessing = Preprocessing(input_size=32)
        data.setup("fit")
        data.train_seed = 7
        train = data.train_dataloader()
        train.sampler.set_epoch(epoch)
        return train

    def same(batches, others) -> bool:
        return len(batches) == len(others) and all(
            all(torch.equal(a, b) for a, b in zip(batch, other)) for batch, other in zip(batches, others)
        )

    first = loader(0)
    torch.manual_seed(0)
    batches = list(first)
    drawn = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(1)), "the loader must leave PyTorch's global stream to dropout"
    assert same(batches, list(loader(2))), "augmentation must not depend on which worker loads an image"
    assert not same(batches, list(loader(0, epoch=2)))

    interrupted = loader(0)
    served = iter(interrupted)
    next(served), next(served)
    resumed = loader(0)
    resumed.load_state_dict(interrupted.state_dict())
    assert same(batches[2:], list(resumed))
    assert resumed.state_dict() == {"batches": len(batches)}
