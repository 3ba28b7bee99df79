"""The selection split of a train/val layout without a test folder: carved from train, served to validation
(images and cached features alike), never touching the reported val split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl

from tests.conftest import TINY_FIT_ARGS, run_cli
from tests.data.test_split import presplit
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.split import make_split
from tlbench.models.module import TransferLearningModule


@pytest.fixture(scope="module")
def presplit_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("presplit")
    data = presplit(root / "official", train=10, val=4, classes=3)
    result = run_cli("fit", "--data.root", str(data), *TINY_FIT_ARGS, "--data.split_seed", "3", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the 'test' numbers below are the official val split, untouched by selection" in result.stdout
    return root / "lightning_logs" / "official_cnn1" / "version_0"


def test_a_train_val_layout_selects_on_a_split_carved_from_train_and_reports_val_untouched(presplit_run):
    split = pd.read_csv(presplit_run / "split.csv")
    metrics = json.loads((presplit_run / "metrics.json").read_text())
    select = split[split.split == "select"]
    assert len(select) == 3 and select.path.str.startswith("train/").all()  # one of 10 per class
    assert sorted(split.path[split.split == "val"]) == sorted(
        p.relative_to(presplit_run.parents[2] / "official").as_posix()
        for p in (presplit_run.parents[2] / "official" / "val").rglob("*.png")
    )
    assert not split.path[split.split == "select"].str.startswith("val/").any()
    assert metrics["test_on"] == "val" and metrics["split_sizes"] == {"train": 27, "val": 12, "test": 0, "select": 3}
    assert all(metrics["phases"][phase]["test_n"] == 12 for phase in ("head", "finetune"))
    predictions = pd.read_csv(presplit_run / metrics["phases"]["head"]["predictions"])
    assert predictions.path.str.startswith("val/").all()


def test_the_selection_split_is_the_same_for_the_same_seed(presplit_run, tmp_path):
    recorded = pd.read_csv(presplit_run / "split.csv")[["path", "label", "split"]]
    again = make_split(presplit_run.parents[2] / "official", seed=3)
    pd.testing.assert_frame_equal(
        recorded.sort_values("path", ignore_index=True), again.sort_values("path", ignore_index=True)
    )


class RecordValidation(pl.Callback):
    """Per validation epoch: what the batches held and how many rows were served."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append((pl_module.batch_inputs["val"], len(trainer.val_dataloaders.dataset)))


@pytest.mark.parametrize(("fraction", "served"), [(0.1, 3), (0.0, 12)])
def test_validation_and_its_cached_features_serve_the_selection_split(tmp_path, monkeypatch, fraction, served):
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    root = presplit(tmp_path / "official", train=10, val=4, classes=3)
    model = TransferLearningModule(
        backbone="cnn6", pretrained=False, input_size=32, head_hidden=8, head_epochs=2, finetune_epochs=1,
        unfreeze_blocks=1,
    )  # fmt: skip
    data = ImageFolderDataModule(
        root=str(root), batch_size=8, num_workers=0, decode_cache=False, select_fraction=fraction
    )
    recorder = RecordValidation()
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(model, data)
    depth = model.frozen_trunk_depth()
    assert recorder.seen == [("pooled", served)] * 2 + [(depth, served)]
    assert data.validation_split == ("select" if fraction else "val") and data.test_on == "val"
