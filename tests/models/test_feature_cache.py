"""The head-phase feature cache: same results as running the backbone, never a stale entry."""

import json

import torch

from tests.conftest import TINY_FIT_ARGS, make_image, run_tlbench
from tlbench.models.feature_cache import cache_key, weights_digest
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
    args = ["--model.head_epochs", "4", "--model.finetune_epochs", "0", "--data.augment", "false", "--model.cache_features", cache]
    result = run_tlbench("fit", "--data.root", str(data), *TINY_FIT_ARGS, *args, *extra, cwd=cwd, env={"TLBENCH_CACHE_DIR": str(cwd.parent / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((cwd / "lightning_logs" / "tiny_cnn1" / "version_0" / "metrics.json").read_text())["phases"]["head"]


def test_cache_on_and_off_agree_and_the_disk_cache_is_reused_and_invalidated(tiny_dataset, tmp_path):
    cached = head_only(tiny_dataset, tmp_path / "on", "true")
    plain = head_only(tiny_dataset, tmp_path / "off", "false")
    assert abs(cached["test_acc"] - plain["test_acc"]) <= 1 / cached["test_n"] + 1e-9
    assert abs(cached["val_acc"] - plain["val_acc"]) <= 1 / 6 + 1e-9
    entries = sorted((tmp_path / "cache" / "features").glob("*.pt"))
    assert len(entries) == 2  # train and val
    again = head_only(tiny_dataset, tmp_path / "again", "true")
    assert sorted((tmp_path / "cache" / "features").glob("*.pt")) == entries
    assert again["test_acc"] == cached["test_acc"]
    make_image(tiny_dataset / "class_0" / "img_000.png", (0, 0, 0), 5)  # same name, new content
    head_only(tiny_dataset, tmp_path / "changed", "true")
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) > len(entries)
