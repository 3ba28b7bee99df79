"""Load a trained model from a run directory, a checkpoint or an exported bundle, for classify, export and serve.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file
carrying a pickled code payload is refused before anything in it runs. Bundles (``tlbench export``) are read
with safetensors and JSON only, never unpickled. The backbone is rebuilt without downloading weights (the
checkpoint or bundle has them) and with the preprocessing stored at training time.

The model is a plain ``Network`` (backbone and head), built from the run's few shape-defining settings, not the
LightningModule that trained it: nothing here imports Lightning or torchmetrics, so a server or a one-image
``classify`` never pays for them (docs/speed.md "Start-up"). The checkpoint's state dict loads as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlbench.data.transforms import Preprocessing
from tlbench.errors import TLBenchError
from tlbench.io import read_json
from tlbench.models.network import ARCHITECTURE_SETTINGS, Network
from tlbench.rundir import METRICS, checkpoint_for_run

# A timm folder (``export --format hf``, tlbench.hub writes it): what timm.models.save_for_hf writes.
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
# tlbench's network keeps the timm model under backbone.model and the head's Linear at head.1 (after its Dropout).
BACKBONE_PREFIX = "backbone.model."
HEAD_LINEAR = "head.1."

BUNDLE_FORMAT = 1
BUNDLE_MANIFEST = "model.json"
BUNDLE_WEIGHTS = "weights.safetensors"
BUNDLE_ONNX = "model.onnx"


@dataclass
class TrainedModel:
    model: nn.Module  # a Network; check's ImageNet classifier is a timm model
    classes: list[str]
    preprocessing: Preprocessing
    backbone: str
    phase: str
    source: Path


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A Lightning checkpoint's contents, refusing pickled code and reporting truncation in one line.

    ``mmap`` maps the tensors instead of reading them: a quick check that the file is whole before Lightning
    loads it."""
    path = Path(path)
    if not path.is_file():
        raise TLBenchError(f"checkpoint {path} does not exist; pass a .ckpt written by tlbench fit")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # UnpicklingError for code payloads, RuntimeError/EOFError for truncation
        reason = (
            "it contains objects other than tensors (refused: loading could run code)"
            if "weights_only" in str(error) or "Unsupported global" in str(error)
            else "it is truncated or not a checkpoint"
        )
        raise TLBenchError(f"cannot load checkpoint {path}: {reason}; use a checkpoint written by tlbench") from None


def model_from_checkpoint(checkpoint: dict, source: Path) -> TrainedModel:
    settings = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if not settings.get("classes"):
        raise TLBenchError(f"{source} has no class names; pass a checkpoint or run directory written by tlbench fit")
    model = build_model(settings, checkpoint.get("tlbench_preprocessing"))
    model.load_state_dict(checkpoint["state_dict"])
    model.weights_source = checkpoint.get("tlbench_weights", model.weights_source)
    # Every tlbench checkpoint records its phase; without it, the phase a fit starts in (head unless it has none).
    phase = checkpoint.get("tlbench_phase") or ("head" if settings.get("head_epochs", 1) > 0 else "finetune")
    return TrainedModel(model.eval(), model.classes, model.preprocessing, settings["backbone"], phase, source)


def build_model(settings: dict, preprocessing: dict | None) -> Network:
    """An untrained network with the architecture of ``settings`` (a run's hyperparameters or a bundle's
    ``ARCHITECTURE_SETTINGS``; the others are ignored), built without fetching any weights; ``None`` keeps the
    backbone's own preprocessing."""
    shape = {name: settings[name] for name in ARCHITECTURE_SETTINGS if name in settings}
    model = Network(**shape, pretrained=False, weights=None, channels_last=settings.get("channels_last", True))
    if preprocessing is not None:
        model.preprocessing = Preprocessing.from_dict(preprocessing)
    return model


def load_bundle(bundle: Path, phase: str | None = None) -> TrainedModel:
    """A model from an exported bundle: ``model.json`` rebuilds the network, ``weights.safetensors`` fills it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        manifest = read_json(bundle / BUNDLE_MANIFEST)
        if manifest.get("format_version") != BUNDLE_FORMAT:
            raise TLBenchError(
                f"{bundle} is bundle format {manifest.get('format_version')}; this tlbench reads format"
                f" {BUNDLE_FORMAT}: re-export it with this tlbench (tlbench export RUN)"
            )
        if phase is not None and phase != manifest["phase"]:
            raise TLBenchError(
                f"{bundle} holds the '{manifest['phase']}' phase, not '{phase}';"
                " export that phase from the run directory"
            )
        model = build_model(manifest["model"], manifest["preprocessing"])
        load_model(model, str(bundle / BUNDLE_WEIGHTS))
    except (
        KeyError,
        ValueError,
        OSError,
        RuntimeError,
        SafetensorError,
    ) as error:  # JSON/shape/missing-key/file errors
        raise TLBenchError(
            f"cannot load bundle {bundle}: {type(error).__name__}: {error}; re-export it with tlbench export"
        ) from None
    return TrainedModel(
        model.eval(), list(model.classes), model.preprocessing, manifest["model"]["backbone"], manifest["phase"], bundle
    )


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / HF_CONFIG).is_file() and (path / HF_WEIGHTS).is_file()


def classifier_name(model: nn.Module) -> str:
    """The dotted name of a timm model's classifier module (``classifier``, ``fc``, ``head.fc``)."""
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier)


def load_hf_folder(folder: Path) -> TrainedModel:
    """A model from a folder written by ``export --format hf`` (or any timm folder whose single Linear classifier
    has ``label_names``): timm builds the architecture, tlbench's module gets the weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / HF_CONFIG).read_text())
        classes = [str(name) for name in config.get("label_names") or []]
        if len(classes) != config.get("num_classes"):
            raise TLBenchError(
                f"{folder}/{HF_CONFIG} has {len(classes)} label_names for {config.get('num_classes')} classes;"
                " re-export it with tlbench export --format hf"
            )
        info = config.get("tlbench", {})
        settings = {"backbone": f"local-dir:{folder}", "head_hidden": 0, "head_dropout": 0.0, "classes": classes}
        model = build_model(settings, None)
        tensors = load_file(str(folder / HF_WEIGHTS))
        head = classifier_name(model.backbone.model) + "."
        state = {
            (HEAD_LINEAR + key[len(head) :] if key.startswith(head) else BACKBONE_PREFIX + key): value
            for key, value in tensors.items()
        }
        model.load_state_dict(state)
    except (KeyError, ValueError, OSError, RuntimeError, SafetensorError) as error:
        raise TLBenchError(
            f"cannot load {folder} as a timm folder: {type(error).__name__}: {str(error).splitlines()[0][:200]};"
            " re-export it with tlbench export --format hf"
        ) from None
    return TrainedModel(
        model.eval(),
        classes,
        model.preprocessing,
        info.get("backbone", config["architecture"]),
        info.get("phase") or "head",
        folder,
    )


def load_trained(path: str | Path, phase: str | None = None) -> TrainedModel:
    """A model ready for inference from a bundle (``tlbench export``), a timm folder (``export --format hf``), a
    run directory (``lightning_logs/<exp>/version_N``) or a ``.ckpt``."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / BUNDLE_MANIFEST).is_file():
        return load_bundle(path, phase)
    if is_hf_folder(path) and not (path / METRICS).is_file():
        trained = load_hf_folder(path)
        if phase is not None and phase != trained.phase:
            raise TLBenchError(f"{path} holds the '{trained.phase}' phase, not '{phase}'; export that phase")
        return trained
    if path.is_dir():
        if not (path / METRICS).is_file():
            raise TLBenchError(
                f"{path} is not a tlbench run directory (no {METRICS}), bundle (no {BUNDLE_MANIFEST}) or timm folder"
                " (config.json + model.safetensors); pass a run directory, a bundle, a timm folder or a .ckpt file"
            )
        path = checkpoint_for_run(path, phase)
    return model_from_checkpoint(read_checkpoint(path), path)
