"""Decode once: images decoded and shrunk to the training resolution, kept on disk for later epochs and runs.

Large JPEGs (896x592 leaves, 4000x3000 phone photos) cost more to decode and resize every epoch than the
network costs to run. The cache stores the result of the eval transform's first step (short side resized to
``resize_size`` with the backbone's interpolation, never upscaled) as a raw ``uint8`` array, so evaluation on
cached images is bit-identical to evaluation from the original files; training crops are taken from the same
resized image. Entries are keyed by file content (sha256) and target size, so an edited file or another
backbone resolution never reuses a stale entry. They live in the ``decoded`` kind of ``tlbench/cache.py``
(verified on every read, 4 GiB by default, least recently used evicted first), pruned when a datamodule starts.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import functional as F

from tlbench.cache import Cache
from tlbench.data.images import load_rgb
from tlbench.data.transforms import INTERPOLATIONS


def shrink_short_side(image: Image.Image, short_side: int, interpolation: str) -> Image.Image:
    if min(image.size) <= short_side:
        return image
    return F.resize(image, short_side, interpolation=INTERPOLATIONS[interpolation])


def _to_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(image), allow_pickle=False)
    return buffer.getvalue()


def _from_bytes(payload: bytes) -> Image.Image:
    return Image.fromarray(np.load(io.BytesIO(payload), allow_pickle=False))


class DecodedImageCache:
    def __init__(self, short_side: int, interpolation: str) -> None:
        self.short_side = short_side
        self.interpolation = interpolation
        self.cache = Cache("decoded")

    def key(self, sha256: str) -> str:
        return f"{sha256}_{self.short_side}_{self.interpolation}"

    def load(self, path: Path, sha256: str) -> Image.Image:
        """The image at ``path`` (content hash ``sha256``) decoded and shrunk, from the cache when it holds it."""
        key = self.key(sha256)
        image = self.cache.get(key, _from_bytes)
        if image is None:
            image = shrink_short_side(load_rgb(path), self.short_side, self.interpolation)
            self.cache.put(key, _to_bytes(image))
        return image
