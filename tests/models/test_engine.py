"""The inference engine: ONNX Runtime where it agrees with torch, torch (with one warning) where it does not."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import tlbench
import tlbench.models.engine as engine_module
from tests.conftest import make_dataset
from tlbench.cache import Cache
from tlbench.classify import classify_paths
from tlbench.errors import TLBenchError
from tlbench.models.engine import (
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    Engine,
    export_onnx,
    graph_key,
    resolve_engine,
)
from tlbench.models.inference import Predictor
from tlbench.models.loading import TrainedModel
from tlbench.models.module import TransferLearningModule

CLASSES = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Every test exports into its own graph cache."""
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def tiny_model(seed: int = 0) -> TransferLearningModule:
    """A random cnn6 with a head, engine "auto"; fine-tuning trains its top 2 of 6 blocks, leaving a frozen trunk."""
    torch.manual_seed(seed)
    return TransferLearningModule(
        backbone="cnn6", pretrained=False, input_size=32, head_hidden=8, unfreeze_blocks=2, classes=CLASSES
    )


def images(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def backbone_engine(model: TransferLearningModule, choice: str = "onnxruntime") -> Engine:
    backbone = model.backbone.eval()
    return Engine(backbone, backbone, choice, "cpu", "test backbone", "pooled")


def test_auto_means_onnxruntime_on_a_cpu_only_and_unknown_names_are_one_line():
    assert resolve_engine("auto", torch.device("cpu")) == "onnxruntime"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("auto", torch.device("cpu"), distributed=True) == "torch"
    assert resolve_engine("onnxruntime", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", torch.device("cpu")) == "torch"
    with pytest.raises(TLBenchError, match="unknown engine 'tensorrt'"):
        resolve_engine("tensorrt", torch.device("cpu"))


def test_onnxruntime_matches_torch_and_the_exported_graph_is_cached(own_cache, monkeypatch):
    model = tiny_model()
    batch = model.preprocessing.normalize(images())
    expected = model.backbone.eval()(batch)
    engine = backbone_engine(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        first, second = engine(batch), engine(batch)
    assert engine.name == "onnxruntime" and engine.max_abs_diff <= PARITY_TOLERANCE
    assert (first - expected).abs().max() <= PARITY_TOLERANCE and torch.equal(first, second)
    assert [path.name for path in own_cache.iterdir()] == [f"{graph_key(model.backbone, batch, 'pooled')}.entry"]

    def no_export(*args, **kwargs):
        raise AssertionError("the cached graph must be reused")

    monkeypatch.setattr(engine_module, "export_onnx", no_export)
    again = backbone_engine(model)
    assert torch.equal(again(batch), first) and again.name == "onnxruntime"


def test_an_export_failure_falls_back_to_torch_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::magic\nsecond line")

    monkeypatch.setattr(engine_module, "export_onnx", broken)
    model = tiny_model()
    batch = model.preprocessing.normalize(images())
    engine = backbone_engine(model)
    with pytest.warns(UserWarning) as caught:
        first = engine(batch)
        second = engine(batch)
    messages = [str(warning.message) for warning in caught]
    assert messages == [
        "ONNX Runtime not used for the test backbone: export or load failed (RuntimeError: unsupported operator"
        " aten::magic); running it in torch"
    ]
    assert engine.name == "torch" and torch.equal(first, model.backbone(batch)) and torch.equal(second, first)


def test_a_graph_that_disagrees_with_torch_falls_back_and_is_not_kept(own_cache, tmp_path):
    model, other = tiny_model(0), tiny_model(1)
    batch = model.preprocessing.normalize(images())
    export_onnx(other.backbone.eval(), batch, tmp_path / "other.onnx")
    key = graph_key(model.backbone, batch, "pooled")
    Cache("onnx").put(key, (tmp_path / "other.onnx").read_bytes())  # another network's graph under this key
    stale = Cache("onnx").path(key)
    engine = backbone_engine(model)
    with pytest.warns(UserWarning, match=r"its output differs from torch's by \S+ > \S+; running it in torch"):
        result = engine(batch)
    assert engine.name == "torch" and torch.equal(result, model.backbone(batch))
    assert not stale.exists()


def test_changed_weights_are_exported_and_checked_again():
    model = tiny_model()
    batch = model.preprocessing.normalize(images())
    engine = backbone_engine(model)
    before = engine(batch)
    with torch.no_grad():
        next(model.backbone.parameters()).mul_(2)
    after = engine(batch)
    assert engine.name == "onnxruntime"
    assert (after - model.backbone(batch)).abs().max() <= PARITY_TOLERANCE
    assert (after - before).abs().max() > 1e-3


def test_the_check_runs_torch_on_a_sample_once_per_weights_and_mode():
    """Torch sees only the first PARITY_IMAGES images, once per (weights, modes): a validation pass switching the
    layers to eval and back to train does not pay for the check again."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(  # no layer that computes differently in train mode (cnn6's dropout does)
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    seen = []

    def reference(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(len(inputs))
        return backbone(inputs)

    engine = Engine(backbone, reference, "onnxruntime", "cpu", "test backbone", "pooled")
    batch = images(3 * PARITY_IMAGES).float() / 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        answer = engine(batch)
        for training in (True, False, True, False):
            backbone.train(training)
            engine(batch)
    assert seen == [PARITY_IMAGES, PARITY_IMAGES]  # eval, then train: each checked once
    assert engine.name == "onnxruntime"
    with torch.no_grad():
        assert (answer - backbone.eval()(batch)).abs().max() <= PARITY_TOLERANCE  # the whole batch, not the sample


class CentredOnTheBatch(torch.nn.Module):
    """In eval mode, each image's output depends on the other images of its batch: checking the graph on a sample
    alone would pass it."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        pooled = inputs.mean(dim=(2, 3))
        return pooled - pooled.mean(dim=0, keepdim=True)


def test_a_graph_whose_answer_depends_on_the_rest_of_the_batch_falls_back():
    network = CentredOnTheBatch().eval()
    engine = Engine(network, network, "onnxruntime", "cpu", "test backbone", "pooled")
    batch = images(4 * PARITY_IMAGES).float() / 255
    with pytest.warns(UserWarning, match=r"its output differs from torch's by \S+ > \S+; running it in torch"):
        answer = engine(batch)
    assert engine.name == "torch" and torch.equal(answer, network(batch))  # torch's answer for the whole batch


def test_module_torch_engine_is_the_plain_torch_pass_and_is_recorded():
    model = tiny_model()
    model.hparams.engine = "torch"
    batch = images()
    expected = model.backbone(model.preprocessing.normalize(batch.contiguous(memory_format=torch.channels_last)))
    assert torch.equal(model.encode(batch), expected)
    assert model.engines_used == {"features": "torch"}
    model.hparams.engine = "auto"
    assert (model.encode(batch) - expected).abs().max() <= PARITY_TOLERANCE
    assert model.engines_used == {"features": "onnxruntime"}


def test_a_frozen_trunk_that_trains_differently_from_its_graph_runs_in_torch():
    """cnn6's stages end in dropout: in training mode the frozen layers are not the exported (eval) graph."""
    model = tiny_model()
    model.apply_phase("finetune")
    model.train()
    depth = model.frozen_trunk_depth()
    assert depth > 0
    with pytest.warns(UserWarning, match="frozen layers below layer"):
        model.encode(images(8))
    assert model.engines_used == {"trunk": "torch"}


def fit(data: Path, root: Path, engine: str, monkeypatch) -> dict:
    """A tiny cnn1 run (the fine-tune phase trains every layer) with its own, cold caches."""
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(root / "cache"))
    run = tlbench.fit(
        data,
        backbone="cnn1",
        output=root,
        seed=3,
        pretrained=False,
        input_size=32,
        head_hidden=8,
        head_epochs=2,
        finetune_epochs=1,
        unfreeze_blocks=-1,
        batch_size=8,
        num_workers=0,
        engine=engine,
        trainer={"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
    )
    metrics = run.metrics
    metrics["history"] = pd.read_csv(run.dir / "history.csv").drop(columns=["seconds", "val_seconds"])
    return metrics


def test_fit_records_the_engine_and_the_same_seed_gives_the_same_run(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "tiny", per_class=8)
    first = fit(data, tmp_path / "one", "auto", monkeypatch)
    second = fit(data, tmp_path / "two", "auto", monkeypatch)
    metrics = json.loads((tmp_path / "one" / "lightning_logs" / "tiny_cnn1" / "version_0" / "metrics.json").read_text())
    assert metrics["engine"] == {"features": "onnxruntime"}
    assert len(list((tmp_path / "one" / "cache" / "onnx").glob("*.entry"))) >= 1
    assert first["history"].equals(second["history"])
    for phase in ("head", "finetune"):
        assert first["phases"][phase]["test_acc"] == second["phases"][phase]["test_acc"]
        assert first["phases"][phase]["val_loss"] == second["phases"][phase]["val_loss"]
    plain = fit(data, tmp_path / "three", "torch", monkeypatch)
    assert plain["engine"] == {"features": "torch"}
    assert not (tmp_path / "three" / "cache" / "onnx").exists()


def trained_model(tmp_path: Path) -> TrainedModel:
    """As ``load_trained`` gives it: the module itself runs in torch, the ``Predictor`` picks the engine."""
    model = tiny_model().eval()
    model.hparams.engine = "torch"
    return TrainedModel(model, CLASSES, model.preprocessing, "cnn6", "head", tmp_path / "made_up.ckpt")


def test_classify_through_onnxruntime_agrees_with_torch(tmp_path):
    folder = make_dataset(tmp_path / "photos", per_class=3)
    paths = sorted(folder.glob("*/*.png"))
    trained = trained_model(tmp_path)
    through_ort = Predictor(trained, batch_size=4, engine="onnxruntime")
    ort = classify_paths(through_ort, paths, top_k=3)
    plain = classify_paths(Predictor(trained, batch_size=4, engine="torch"), paths, top_k=3)
    assert through_ort.engine.name == "onnxruntime"
    assert (ort.top1_label == plain.top1_label).all()
    assert (ort.top1_prob - plain.top1_prob).abs().max() <= PARITY_TOLERANCE


def test_serve_predicts_through_onnxruntime(tmp_path):
    from fastapi.testclient import TestClient

    from tlbench.serve.app import ServeSettings, create_app

    trained = trained_model(tmp_path)
    image = Image.new("RGB", (40, 40), (200, 40, 40))
    upload = io.BytesIO()
    image.save(upload, format="PNG")
    expected = Predictor(trained, engine="torch").probabilities([image])[0]
    with TestClient(create_app(trained, ServeSettings(engine="onnxruntime", top_k=3))) as client:
        response = client.post("/predict", files={"file": ("x.png", upload.getvalue(), "image/png")})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions[0]["label"] == CLASSES[int(expected.argmax())]
    assert abs(predictions[0]["prob"] - float(expected.max())) <= PARITY_TOLERANCE
    assert len(list((tmp_path / "cache" / "onnx").glob("*.entry"))) == 1  # it ran the exported graph
