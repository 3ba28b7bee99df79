"""The head-phase feature cache: same results as running the backbone, never a stale entry."""

import json

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from tests.conftest import TINY_FIT_ARGS, make_image, run_cli
from tlbench.callbacks.feature_cache import FeatureCaching
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.images import load_rgb
from tlbench.models.feature_cache import cache_key, compute_features, weights_digest
from tlbench.models.inference import Predictor
from tlbench.models.loading import load_trained
from tlbench.models.module import TransferLearningModule

FILES = [["a/1.jpg", "a", "f00"], ["b/2.jpg", "b", "ba1"]]


def test_key_changes_with_weights_transform_and_files():
    base = cache_key("w", {"views": 1}, FILES)
    assert base == cache_key("w", {"views": 1}, [list(f) for f in FILES])
    assert base != cache_key("w2", {"views": 1}, FILES)
    assert base != cache_key("w", {"views": 2}, FILES)
    assert base != cache_key("w", {"views": 1}, [FILES[0], ["b/2.jpg", "b", "changed"]])
    assert base != cache_key("w", {"views": 1}, [FILES[0], ["b/2.jpg", "a", "ba1"]])


def test_weights_digest_sees_any_tensor_change():
    model = TransferLearningModule(backbone="cnn1", pretrained=False, input_size=32, classes=["a", "b"])
    before = weights_digest(model.backbone)
    with torch.no_grad():
        next(model.backbone.parameters())[0, 0, 0, 0] += 1e-3
    assert weights_digest(model.backbone) != before


def head_only(data, cwd, cache: str, *extra: str):
    cwd.mkdir(parents=True, exist_ok=True)
    args = [
        "--model.head_epochs",
        "4",
        "--model.finetune_epochs",
        "0",
        "--data.augment",
        "false",
        "--model.cache_features",
        cache,
    ]
    result = run_cli(
        "fit",
        "--data.root",
        str(data),
        *TINY_FIT_ARGS,
        *args,
        *extra,
        cwd=cwd,
        env={"TLBENCH_CACHE_DIR": str(cwd.parent / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((cwd / "lightning_logs" / "tiny_cnn1" / "version_0" / "metrics.json").read_text())["phases"][
        "head"
    ]


def test_cache_on_and_off_agree_and_the_disk_cache_is_reused_and_invalidated(tiny_dataset, tmp_path):
    cached = head_only(tiny_dataset, tmp_path / "on", "true")
    plain = head_only(tiny_dataset, tmp_path / "off", "false")
    assert abs(cached["test_acc"] - plain["test_acc"]) <= 1 / cached["test_n"] + 1e-9
    assert abs(cached["val_acc"] - plain["val_acc"]) <= 1 / 6 + 1e-9
    entries = sorted((tmp_path / "cache" / "features").glob("*.entry"))
    assert len(entries) == 2  # train and val
    again = head_only(tiny_dataset, tmp_path / "again", "true")
    assert sorted((tmp_path / "cache" / "features").glob("*.entry")) == entries
    assert again["test_acc"] == cached["test_acc"]
    make_image(tiny_dataset / "class_0" / "img_000.png", (0, 0, 0), 5)  # same name, new content
    head_only(tiny_dataset, tmp_path / "changed", "true")
    assert len(list((tmp_path / "cache" / "features").glob("*.entry"))) > len(entries)


@pytest.mark.parametrize("backbone, unfreeze", [("cnn1", "-1"), ("cnn6", "1")])
def test_fine_tune_validation_runs_the_fine_tuned_backbone_not_the_head_phase_cache(
    tiny_dataset, tmp_path, backbone, unfreeze
):
    """After the boundary, validation must not use the head phase's cached features: they are stale as soon as
    the backbone trains. The recorded fine-tune val_loss must equal the loss recomputed from last.ckpt's weights,
    whether validation runs on images (all blocks train) or on the frozen layers' cached activations (top block)."""
    args = [
        "--model.backbone",
        backbone,
        "--model.unfreeze_blocks",
        unfreeze,
        "--model.head_epochs",
        "1",
        "--model.finetune_epochs",
        "2",
        "--model.finetune_lr",
        "0.05",
        "--data.augment",
        "false",
        "--model.label_smoothing",
        "0",  # the recorded val_loss is then the plain negative log-likelihood recomputed below
    ]
    result = run_cli(
        "fit",
        "--data.root",
        str(tiny_dataset),
        *TINY_FIT_ARGS,
        *args,
        cwd=tmp_path,
        env={"TLBENCH_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "lightning_logs" / f"tiny_{backbone}" / "version_0"
    trained = load_trained(next((tmp_path / "checkpoints").rglob("last.ckpt")))
    split = pd.read_csv(run / "split.csv")
    val = split[split.split == "val"]
    probs = Predictor(trained).probabilities([load_rgb(tiny_dataset / path) for path in val.path])
    targets = torch.tensor([trained.classes.index(label) for label in val.label])
    recomputed = torch.nn.functional.nll_loss(probs.log(), targets).item()
    history = pd.read_csv(run / "history.csv")
    assert trained.phase == "finetune"
    assert history.val_loss.iloc[-1] == pytest.approx(recomputed, abs=1e-4)


def fine_tune_history(data, cwd, cache: str) -> pd.DataFrame:
    cwd.mkdir(parents=True)
    args = [
        "--model.backbone",
        "cnn6",
        "--model.unfreeze_blocks",
        "1",
        "--model.head_epochs",
        "0",
        "--model.finetune_epochs",
        "2",
        "--model.cache_features",
        cache,
    ]
    result = run_cli(
        "fit", "--data.root", str(data), *TINY_FIT_ARGS, *args, cwd=cwd, env={"TLBENCH_CACHE_DIR": str(cwd / "cache")}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return pd.read_csv(cwd / "lightning_logs" / "tiny_cnn6" / "version_0" / "history.csv")


def test_fine_tune_validation_on_cached_frozen_layers_matches_running_the_whole_network(tiny_dataset, tmp_path):
    """Validation on the frozen layers' cached activations gives the numbers of the full network, and computing
    the cache disturbs neither the training run's random stream nor its frozen BatchNorm layers."""
    cached = fine_tune_history(tiny_dataset, tmp_path / "on", "true")
    plain = fine_tune_history(tiny_dataset, tmp_path / "off", "false")
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert cached[column].tolist() == pytest.approx(plain[column].tolist(), abs=1e-5), column


class RecordBatchInputs(pl.Callback):
    """What the module was told its batches hold, at the end of every epoch (after that epoch's validation)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append(dict(pl_module.batch_inputs))


def test_a_plain_lightning_trainer_caches_features_without_being_told(tiny_dataset, tmp_path, monkeypatch):
    """``Trainer().fit(module, datamodule)``, as a library user writes it: the module adds ``FeatureCaching`` itself,
    the head phase trains on cached pooled features, fine-tune validation on the frozen layers' activations, and a
    later ``validate`` runs on images again."""
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    model = TransferLearningModule(
        backbone="cnn6",
        pretrained=False,
        input_size=32,
        head_hidden=8,
        head_epochs=2,
        finetune_epochs=1,
        unfreeze_blocks=1,
    )
    data = ImageFolderDataModule(root=str(tiny_dataset), batch_size=8, num_workers=0, decode_cache=False)
    recorder = RecordBatchInputs()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[recorder],
    )
    trainer.fit(model, data)
    assert FeatureCaching.attached_to(trainer) is not None
    depth = model.frozen_trunk_depth()
    assert recorder.seen == [{"train": "pooled", "val": "pooled"}] * 2 + [{"train": "images", "val": depth}]
    assert len(list((tmp_path / "cache" / "features").glob("*.entry"))) == 2
    assert model.batch_inputs == {"train": "images", "val": "images"} and data.precomputed_inputs is None
    trainer.validate(model, data, verbose=False)


def test_without_feature_caching_every_loader_serves_images(tiny_dataset, tmp_path):
    model = TransferLearningModule(
        backbone="cnn1",
        pretrained=False,
        input_size=32,
        head_hidden=8,
        head_epochs=1,
        finetune_epochs=0,
        cache_features=False,
    )
    assert not any(isinstance(callback, FeatureCaching) for callback in model.configure_callbacks())
    data = ImageFolderDataModule(root=str(tiny_dataset), batch_size=8, num_workers=0, decode_cache=False)
    recorder = RecordBatchInputs()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[recorder],
    )
    trainer.fit(model, data)
    assert recorder.seen == [{}]


@pytest.mark.parametrize("progress", [True, False])
def test_feature_extraction_shows_a_one_line_progress_bar_on_request(progress, capsys):
    dataset = TensorDataset(torch.zeros(10, 3, 4, 4), torch.zeros(10, dtype=torch.long), torch.arange(10))
    result = compute_features(
        lambda batch: batch.mean(dim=(2, 3)),
        dataset,
        views=2,
        batch_size=4,
        num_workers=0,
        seed=0,
        device=torch.device("cpu"),
        description="caching features: train (2 views)",
        progress=progress,
    )
    assert result.features.shape == (2, 10, 3)
    err = capsys.readouterr().err
    assert ("caching features: train (2 views)" in err and "6/6" in err) == progress
    assert err == "" or progress
