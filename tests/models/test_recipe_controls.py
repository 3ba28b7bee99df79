"""The recipe controls through the CLI: layer decay, warmup, mixup/cutmix, and per-phase early stopping."""

import pandas as pd

from tests.conftest import TINY_FIT_ARGS, run_tlbench

RUN = ("lightning_logs", "tiny_cnn1", "version_0")


def fit(data, cwd, *extra):
    cwd.mkdir(parents=True, exist_ok=True)
    return run_tlbench("fit", "--data.root", str(data), *TINY_FIT_ARGS, *extra, cwd=cwd)


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
