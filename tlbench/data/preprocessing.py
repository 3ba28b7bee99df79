"""What turns an RGB image into a network's input, and that arithmetic in numpy for paths that never import torch.

``Preprocessing`` is saved with runs and exports. ``eval_array`` is ``eval_transform`` (data/transforms.py:
torchvision's Resize, CenterCrop, ToTensor, Normalize) in PIL and numpy: the same resize call, the same crop
offsets (``round`` of half the margin, half to even) and the same float32 operations in the same order, so its
arrays equal the tensors (tests/data/test_preprocessing.py). ``classify`` uses it where it runs without torch
(models/graph_classifier.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# The resampling filters a backbone's config may name (timm's pretrained_cfg "interpolation").
INTERPOLATION_NAMES = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn an RGB image into the network's input; saved with runs and exports."""

    input_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.input_size / self.crop_pct))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images (``[..., 3, H, W]``) as the network's float input, on their own device and in their
        memory layout (convert a uint8 batch to channels-last first: a quarter of the bytes to move)."""
        import torch  # only the torch paths call this; the module stays importable without torch

        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return images.float().div_(255).sub_(mean).div_(std)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "resize_size": self.resize_size}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(
            input_size=int(values["input_size"]),
            interpolation=str(values["interpolation"]),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            crop_pct=float(values["crop_pct"]),
        )

    @classmethod
    def from_timm_config(cls, config: dict) -> Preprocessing:
        interpolation = config.get("interpolation", "bilinear")
        return cls(
            input_size=int(config["input_size"][-1]),
            interpolation=interpolation if interpolation in INTERPOLATION_NAMES else "bilinear",
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
            crop_pct=float(config.get("crop_pct") or 0.875),
        )


def eval_array(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """``eval_transform(pre)(image)`` as a float32 ``3 x S x S`` array, without torch: the short side resized to
    ``pre.resize_size`` (PIL, the weights' filter), the centre ``S x S`` crop, scaled to [0, 1] and normalised.
    Needs ``crop_pct <= 1`` (the crop inside the resized image; torchvision pads otherwise)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = pre.resize_size, int(pre.resize_size * long / short)  # torchvision's arithmetic
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, Image.Resampling[pre.interpolation.upper()])
    crop = pre.input_size
    top, left = (int(round((side - crop) / 2.0)) for side in (size[1], size[0]))
    pixels = np.asarray(image, dtype=np.uint8)[top : top + crop, left : left + crop].transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    return (pixels.astype(np.float32) / np.float32(255) - mean) / std
