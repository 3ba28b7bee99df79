"""Decode once: images decoded and shrunk to the training resolution, kept on disk for later epochs and runs.

Large JPEGs (896x592 leaves, 4000x3000 phone photos) cost more to decode and resize every epoch than the
network costs to run. The cache stores the result of the eval transform's first step (short side resized to
``resize_size`` with the backbone's interpolation, never upscaled) as a raw ``uint8`` array, so evaluation on
cached images is bit-identical to evaluation from the original files; training crops are taken from the same
resized image. Entries are keyed by file content (sha256) and target size, so an edited file or another
backbone resolution never reuses a stale entry. The folder (``$TLBENCH_CACHE_DIR/decoded``, default
``~/.cache/tlbench/decoded``) is pruned to ``max_bytes``, oldest entries first, when a datamodule starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import functional as F

from tlbench.data.images import load_rgb
from tlbench.data.transforms import INTERPOLATIONS
from tlbench.io import atomic_write, cache_dir

DEFAULT_MAX_BYTES = 4 << 30


def shrink_short_side(image: Image.Image, short_side: int, interpolation: str) -> Image.Image:
    if min(image.size) <= short_side:
        return image
    return F.resize(image, short_side, interpolation=INTERPOLATIONS[interpolation])


class DecodedImageCache:
    def __init__(self, short_side: int, interpolation: str, directory: Path | None = None) -> None:
        self.short_side = short_side
        self.interpolation = interpolation
        self.directory = directory or cache_dir("decoded")

    def entry(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}_{self.short_side}_{self.interpolation}.npy"

    def load(self, path: Path, sha256: str) -> Image.Image:
        entry = self.entry(sha256)
        try:
            return Image.fromarray(np.load(entry))
        except (OSError, ValueError):
            pass
        image = shrink_short_side(load_rgb(path), self.short_side, self.interpolation)
        atomic_write(entry, lambda tmp: np.save(tmp.open("wb"), np.asarray(image)), durable=False)
        return image


def prune(directory: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Delete the oldest entries until the cache holds at most ``max_bytes``; returns how many were deleted."""
    directory = directory or cache_dir("decoded")
    entries = sorted(directory.glob("*/*.npy"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
    total = sum(p.stat().st_size for p in entries)
    deleted = 0
    for entry in entries:
        if total <= max_bytes:
            break
        total -= entry.stat().st_size
        entry.unlink(missing_ok=True)
        deleted += 1
    return deleted
