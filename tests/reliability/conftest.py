"""Images generated on the fly with PIL: every test builds exactly the file it is about in ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def smooth_image(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A distinct photo-like picture per seed: random 8x8 colours upscaled smoothly, so perceptual hashes differ
    between seeds by about half their bits while surviving resizing and recompression."""
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture
def photo() -> Callable[..., Path]:
    """``photo(path, seed=0, image=None, **save_options)`` writes an image (format from the suffix) and returns
    its path."""

    def write(path: Path, seed: int = 0, image: Image.Image | None = None, **save_options) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        (image or smooth_image(seed)).save(path, **save_options)
        return path

    return write
