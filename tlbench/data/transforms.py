"""Train and eval transforms built from the backbone's own pretrained config.

The backbone decides input size, interpolation, normalisation and centre-crop ratio (timm's pretrained_cfg),
so a 299 px Inception and a 224 px VGG each get what their weights were trained with. Training augmentation
is close to the 2017 study's Keras ``ImageDataGenerator`` (zoom, shifts, small rotation, horizontal flip).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


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

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "resize_size": self.resize_size}

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        return cls(
            input_size=int(values["input_size"]),
            interpolation=str(values["interpolation"]),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            crop_pct=float(values["crop_pct"]),
        )

    @classmethod
    def from_timm_config(cls, config: dict) -> "Preprocessing":
        interpolation = config.get("interpolation", "bilinear")
        return cls(
            input_size=int(config["input_size"][-1]),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
            crop_pct=float(config.get("crop_pct") or 0.875),
        )


def _to_tensor(pre: Preprocessing) -> list:
    return [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the short side to ``input_size / crop_pct`` and centre-crop, as the weights were evaluated."""
    mode = INTERPOLATIONS[pre.interpolation]
    return T.Compose([T.Resize(pre.resize_size, interpolation=mode), T.CenterCrop(pre.input_size), *_to_tensor(pre)])


def train_transform(pre: Preprocessing, augment: bool = True) -> T.Compose:
    """Random zoom/crop, flip, small rotation and shift; without ``augment`` it is the eval transform."""
    if not augment:
        return eval_transform(pre)
    mode = INTERPOLATIONS[pre.interpolation]
    return T.Compose(
        [
            T.RandomResizedCrop(pre.input_size, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), interpolation=mode),
            T.RandomHorizontalFlip(),
            T.RandomAffine(degrees=15, translate=(0.1, 0.1), interpolation=mode),
            *_to_tensor(pre),
        ]
    )
