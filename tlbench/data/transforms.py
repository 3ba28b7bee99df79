"""Train and eval transforms built from the backbone's own pretrained config.

The backbone decides input size, interpolation, normalisation and centre-crop ratio (timm's pretrained_cfg),
so a 299 px Inception and a 224 px VGG each get what their weights were trained with. Training augmentation
is close to the 2017 study's Keras ``ImageDataGenerator`` (zoom, shifts, small rotation, horizontal flip).

The datamodule's loaders hand out ``uint8`` images and the model normalises whole batches on its device
(``Preprocessing.normalize``, the same arithmetic as ``ToTensor`` + ``Normalize``, so results are bit-identical):
loader workers share the CPU with training, and a quarter of the bytes cross from worker to trainer. The
augmentation (random zoom crop, rotation, shift, flip) is one affine warp, so each image is resampled once.
An opt-in policy (RandAugment, TrivialAugment) runs on the PIL image before the warp.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from tlbench.data.preprocessing import INTERPOLATION_NAMES, Preprocessing

INTERPOLATIONS = {name: InterpolationMode(name) for name in INTERPOLATION_NAMES}
AugmentPolicy = Literal["none", "randaugment", "trivialaugment"]
# timm's RandAugment: 2 ops per image at magnitude 9 of 10, the magnitude jittered with std 0.5 (timm's recipes).
RANDAUGMENT_CONFIG = "rand-m9-mstd0.5"


def _to_tensor(pre: Preprocessing) -> list:
    return [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def _eval_geometry(pre: Preprocessing) -> list:
    return [T.Resize(pre.resize_size, interpolation=INTERPOLATIONS[pre.interpolation]), T.CenterCrop(pre.input_size)]


def eval_crop(pre: Preprocessing) -> T.Compose:
    """The geometry of ``eval_transform`` alone: the resized, centre-cropped PIL image (what a self-contained
    export takes as ``uint8``, normalising inside its graph)."""
    return T.Compose(_eval_geometry(pre))


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the short side to ``input_size / crop_pct`` and centre-crop, as the weights were evaluated; the
    normalised float tensor (for inference on single images: classify, serve, export)."""
    return T.Compose([*_eval_geometry(pre), *_to_tensor(pre)])


class RandomWarp:
    """Random zoom crop (area ``scale``, aspect ``ratio``), rotation, shift and horizontal flip as one affine warp.

    The same family of images as ``RandomResizedCrop`` then ``RandomAffine`` then ``RandomHorizontalFlip``, with a
    single resampling instead of two. Images larger than the resize size are first shrunk with the weights'
    interpolation and antialiasing (the decode cache has usually done it already), since an affine warp does not
    filter when it minifies. The warp itself is bilinear: 2.5x cheaper than bicubic in PIL (1.2 vs 3.3 ms per
    224 px image here), which matters while loader workers share the CPU with training, and as invisible to
    training as the choice between them (timm's recipes even pick one at random). Evaluation keeps the weights'
    own interpolation.
    """

    def __init__(
        self,
        size: int,
        short_side: int,
        interpolation: str,
        scale=(0.6, 1.0),
        ratio=(3 / 4, 4 / 3),
        degrees: float = 15,
        translate: float = 0.1,
    ) -> None:
        self.size, self.short_side = size, short_side
        self.shrink = T.Resize(short_side, interpolation=INTERPOLATIONS[interpolation])
        self.scale, self.log_ratio = scale, (math.log(ratio[0]), math.log(ratio[1]))
        self.degrees, self.translate = degrees, translate

    def _uniform(self, low: float, high: float) -> float:
        return float(torch.empty(1).uniform_(low, high))

    def _crop(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Crop box (left, top, width, height) as ``RandomResizedCrop`` draws it, centre crop after 10 misses."""
        for _ in range(10):
            area = width * height * self._uniform(*self.scale)
            aspect = math.exp(self._uniform(*self.log_ratio))
            w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if w <= width and h <= height:
                return self._uniform(0, width - w), self._uniform(0, height - h), w, h
        side = min(width, height)
        return (width - side) / 2, (height - side) / 2, side, side

    def __call__(self, image: Image.Image) -> Image.Image:
        if min(image.size) > self.short_side:
            image = self.shrink(image)
        left, top, w, h = self._crop(*image.size)
        angle = math.radians(self._uniform(-self.degrees, self.degrees))
        shift_x, shift_y = (self._uniform(-self.translate, self.translate) * self.size for _ in range(2))
        flip = self._uniform(0, 1) < 0.5
        # PIL's affine transform maps each output pixel back to the source: un-flip, un-shift, un-rotate about the
        # centre, then scale and move into the crop box.
        size, centre = self.size, self.size / 2
        cos, sin = math.cos(angle), math.sin(angle)
        steps = [
            [[-1, 0, size], [0, 1, 0]] if flip else [[1, 0, 0], [0, 1, 0]],
            [[1, 0, -centre - shift_x], [0, 1, -centre - shift_y]],
            [[cos, sin, 0], [-sin, cos, 0]],
            [[1, 0, centre], [0, 1, centre]],
            [[w / size, 0, left], [0, h / size, top]],
        ]
        matrix = torch.eye(3, dtype=torch.float64)
        for step in steps:
            matrix = torch.tensor([*step, [0, 0, 1]], dtype=torch.float64) @ matrix
        return image.transform(
            (size, size), Image.AFFINE, tuple(matrix[:2].flatten().tolist()), resample=Image.BILINEAR
        )


class TorchSeeded:
    """Run ``transform`` with Python's and NumPy's random streams seeded from PyTorch's, then put them back.

    timm's RandAugment draws from ``random`` and ``numpy.random``; this makes it follow the one stream every other
    augmentation here uses, so the feature cache's seeded augmented views stay reproducible without loader workers.
    """

    def __init__(self, transform: Callable[[Image.Image], Image.Image]) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> Image.Image:
        seed = int(torch.randint(2**31, (1,)))
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return self.transform(image)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def augment_policy_transform(pre: Preprocessing, policy: AugmentPolicy) -> list:
    """The policy's transform on PIL images, as a list to splice into a ``Compose`` (empty for "none")."""
    if policy == "none":
        return []
    if policy == "trivialaugment":
        return [T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR)]
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(pre.resize_size * 0.45), "img_mean": tuple(round(255 * m) for m in pre.mean)}
    return [TorchSeeded(rand_augment_transform(RANDAUGMENT_CONFIG, hparams))]


def loader_transform(pre: Preprocessing, augment: bool, policy: AugmentPolicy = "none") -> T.Compose:
    """What the datamodule's loaders apply: the augment ``policy`` then the random warp (``augment``), or the eval
    geometry, to ``uint8``."""
    if not augment:
        return T.Compose([*_eval_geometry(pre), T.PILToTensor()])
    warp = RandomWarp(pre.input_size, pre.resize_size, pre.interpolation)
    return T.Compose([*augment_policy_transform(pre, policy), warp, T.PILToTensor()])
