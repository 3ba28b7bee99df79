"""From-scratch baselines of the 2017 study, registered with timm so they are backbones like any other.

``cnn6`` is the study's six-layer convnet (2x32, 2x64, 2x128 3x3 convolutions, each pair followed by max-pool
and dropout); its "dense 512" layer is the tlbench head with ``head_hidden: 512``. ``cnn1`` is the one-layer
control. BatchNorm after each convolution is a deliberate modern addition: without it the scratch baseline
mostly measures how unlucky its initialisation was on a few hundred images.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

BASELINE_CFG = {
    "input_size": (3, 128, 128),
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "num_classes": 0,
}


def _conv(in_chs: int, out_chs: int) -> list[nn.Module]:
    return [nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


class SmallConvNet(nn.Module):
    """Stages of ``convs_per_stage`` 3x3 convolutions, each stage ending in max-pool and dropout."""

    def __init__(
        self,
        widths: tuple[int, ...],
        convs_per_stage: int,
        num_classes: int = 0,
        drop_rate: float = 0.25,
        in_chans: int = 3,
    ):
        super().__init__()
        stages, channels = [], in_chans
        for width in widths:
            layers = []
            for _ in range(convs_per_stage):
                layers += _conv(channels, width)
                channels = width
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2), nn.Dropout(drop_rate)))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = dict(BASELINE_CFG)

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^stages\.0", "blocks": r"^stages\.(\d+)"}

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _baseline(widths: tuple[int, ...], convs_per_stage: int, pretrained: bool, **kwargs) -> SmallConvNet:
    if pretrained:
        raise ValueError("baselines are trained from scratch; there are no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return SmallConvNet(widths, convs_per_stage, **kwargs)


@register_model
def cnn6(pretrained: bool = False, **kwargs) -> SmallConvNet:
    """The study's six-layer convnet: 2x32, 2x64, 2x128 3x3 convolutions."""
    return _baseline((32, 64, 128), 2, pretrained, **kwargs)


@register_model
def cnn1(pretrained: bool = False, **kwargs) -> SmallConvNet:
    """One 3x3 convolution of 32 filters: the floor any learned representation must beat."""
    return _baseline((32,), 1, pretrained, **kwargs)


BASELINES = frozenset({"cnn6", "cnn1"})
