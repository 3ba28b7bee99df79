"""The recipe controls through the CLI: layer decay, warmup, mixup/cutmix, and per-phase early stopping."""

import pandas as pd

from tests.conftest import TINY_FIT_ARGS, run_cli, run_tlbench

RUN = ("lightning_logs", "tiny_cnn1", "version_0")


def fit(data, cwd, *extra, run=run_cli):
    """A tiny fit, in this process unless ``run`` is ``run_tlbench`` (a fit that gets killed)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return run("fit", "--data.root", str(data), *TINY_FIT_ARGS, *extra, cwd=cwd)


def test_fit_with_every_optimisation_control(tiny_dataset, tmp_path):
    result = fit(
        tiny_dataset,
        tmp_path,
        *("--model.head_epochs", "2", "--model.finetune_epochs", "2", "--model.layer_decay", "0.7"),
        *("--model.decay_norms_and_biases", "false", "--model.warmup_epochs", "1", "--model.head_warmup_epochs", "1"),
        *("--model.mixup", "0.4", "--model.cutmix", "1.0", "--model.label_smoothing", "0.1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = pd.read_csv(tmp_path.joinpath(*RUN, "history.csv"))
    assert list(history.phase) == ["head", "head", "finetune", "finetune"]
    assert history.train_acc.notna().all() and history.train_loss.notna().all()


# A learning rate of 0 keeps val_loss constant, so patience runs out after a known number of validations.
FROZEN_HEAD = ("--model.head_epochs", "6", "--model.head_lr", "0")
KILL = "--trainer.callbacks+=tests.helpers.KillAtEpochStart"


def phases(cwd) -> list[str]:
    history = pd.read_csv(cwd.joinpath(*RUN, "history.csv"))
    assert list(history.epoch) == list(range(len(history)))
    return list(history.phase)


def test_head_patience_ends_the_head_phase_and_a_run_killed_at_the_new_boundary_resumes_fine_tuning(
    tiny_dataset, tmp_path
):
    """Head on cached features: epoch 0 sets the best val_loss, epoch 1 runs out of patience 1, so fine-tuning
    starts at epoch 2 (not 6) and the fit has 2 + finetune_epochs epochs. Killed as epoch 2 starts, the resumed run
    must fine-tune from epoch 2 on: the boundary and the patience counts come back from last.ckpt."""
    args = (*FROZEN_HEAD, "--model.head_patience", "1", "--model.finetune_epochs", "2")
    killed = fit(tiny_dataset, tmp_path, *args, KILL, "--trainer.callbacks.epoch=2", run=run_tlbench)
    assert killed.returncode == -9
    assert phases(tmp_path) == ["head", "head"]
    resumed = fit(tiny_dataset, tmp_path, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert phases(tmp_path) == ["head", "head", "finetune", "finetune"]


def test_patience_survives_a_kill_inside_the_head_phase_and_finetune_patience_ends_the_fit(tiny_dataset, tmp_path):
    """Uncached head phase (last.ckpt every epoch), patience 2: epochs 1 and 2 are stale, the kill at epoch 2 falls
    between them. Fine-tuning at lr 0 with patience 1 stops after its second epoch, long before its 5."""
    args = (
        *FROZEN_HEAD,
        *("--model.cache_features", "false", "--model.head_patience", "2"),
        *("--model.finetune_epochs", "5", "--model.finetune_lr", "0", "--model.finetune_patience", "1"),
    )
    assert fit(tiny_dataset, tmp_path, *args, KILL, "--trainer.callbacks.epoch=2", run=run_tlbench).returncode == -9
    resumed = fit(tiny_dataset, tmp_path, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert phases(tmp_path) == ["head", "head", "head", "finetune", "finetune"]
