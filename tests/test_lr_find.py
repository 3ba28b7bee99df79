"""``python -m tlbench lr_find``: a range test per phase, printed and plotted, on a tiny dataset."""

import inspect
import math
import re

import pytorch_lightning as pl

from tests.conftest import run_cli
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.models.module import TransferLearningModule
from tlbench.tuning import phase_for_search

ARGS = [
    "--model.backbone", "cnn1", "--model.pretrained", "false", "--model.input_size", "32", "--model.head_hidden", "16",
    "--model.head_epochs", "1", "--model.finetune_epochs", "1", "--data.batch_size", "2", "--data.num_workers", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
]  # fmt: skip


def test_lr_find_prints_and_plots_a_suggestion_per_phase_and_leaves_no_run(tiny_dataset, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("lr_find", "--data.root", str(tiny_dataset), *ARGS, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    defaults = inspect.signature(TransferLearningModule).parameters
    for name in ("head_lr", "finetune_lr"):
        configured = re.escape(str(defaults[name].default))  # the module's default learning rate, as printed
        line = re.search(rf"^{name}: suggested (\S+) \(configured {configured}\); plot (\S+)$", result.stdout, re.M)
        assert line, result.stdout
        assert float(line.group(1)) > 0
    plots = work / "lightning_logs" / "lr_find" / "tiny_cnn1"
    assert sorted(p.name for p in plots.iterdir()) == ["finetune_lr.png", "head_lr.png"]
    assert (plots / "head_lr.png").read_bytes()[:4] == b"\x89PNG"
    leftovers = {p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()}
    assert leftovers == {f"lightning_logs/lr_find/tiny_cnn1/{name}.png" for name in ("head_lr", "finetune_lr")}


def test_lr_find_searches_only_the_phases_the_run_has(tiny_dataset, tmp_path):
    head_only = ("--model.finetune_epochs", "0")
    result = run_cli("lr_find", "--data.root", str(tiny_dataset), *ARGS, *head_only, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "head_lr: suggested" in result.stdout and "finetune_lr" not in result.stdout


def test_a_search_gets_the_epochs_its_steps_need_in_one_phase_and_restores_the_schedule(tiny_dataset):
    """With 1 head and 1 fine-tune epoch of a few batches, the sweep's 100 steps would stop after a few: each
    search widens its own phase to enough epochs and leaves the other phase out, then restores both."""
    module = TransferLearningModule(backbone="cnn1", pretrained=False, head_epochs=1, finetune_epochs=1)
    datamodule = ImageFolderDataModule(root=str(tiny_dataset), batch_size=2, num_workers=0)
    steps_per_epoch = math.ceil(len(datamodule.dataset("train")) / 2)
    for phase in ("head", "finetune"):
        trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False)
        with phase_for_search(module, datamodule, trainer, phase, num_training=100):
            assert module.phase == phase and module.total_epochs * steps_per_epoch >= 100
            assert trainer.max_epochs == module.total_epochs
            assert module.finetune_start == (module.total_epochs if phase == "head" else 0)
        assert (module.hparams.head_epochs, module.hparams.finetune_epochs, module.finetune_start) == (1, 1, 1)
