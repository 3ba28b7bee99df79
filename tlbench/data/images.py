"""The one image conversion every command uses (train, evaluate, audit, classify, serve).

Keeping it in one place means a photo is seen the same way everywhere:

* EXIF orientation is applied, so a phone photo stored sideways is seen upright.
* Animated or multi-page files (GIF, APNG, WebP, TIFF) give their first frame: ``Image.open`` positions there
  and nothing here seeks further.
* Transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) is composited on white
  (``TRANSPARENCY_BACKGROUND``): the usual page background of product and clip-art images, and what a viewer
  shows. Dropping the alpha channel instead would reveal whatever colour the transparent pixels happen to store,
  often black.
* Every mode becomes 8-bit RGB by its full range: 16-bit greyscale ``I;16`` maps 0..65535 to 0..255 (PIL's own
  ``convert`` clips ``I`` at 255, which turns a mid-grey 16-bit scan white); ``I`` (32-bit integer) is read as
  16-bit when its values fit, else stretched from its min to its max; ``F`` (float) is read as 0..1 when its
  values fit, else stretched; CMYK, YCbCr, 1-bit and greyscale go through PIL's conversions.

Files are refused with an ``ImageLoadError`` whose message is a one-line reason: empty, not an image, a format
outside ``SUPPORTED_FORMATS``, a possible decompression bomb (more than ``MAX_PIXELS`` pixels claimed by the
header, refused before any pixel memory is allocated), smaller than ``min_side``, or not decodable (truncated,
corrupt).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Identified by content, not extension: cameras write JPEGs that PIL names MPO, and web downloads called .jpg are
# often GIF. Other formats PIL can parse (EPS runs Ghostscript, PSD, ICO...) are refused rather than trusted.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF"})
TRANSPARENCY_BACKGROUND = (255, 255, 255)
# PIL's own default limit (about 9500 x 9500, 256 MiB as RGB), enforced here too because other libraries set
# ``Image.MAX_IMAGE_PIXELS = None`` to silence PIL, which would let a 100-byte file claim 40000 x 40000 pixels.
MAX_PIXELS = 89_478_485
# Below this side a photo carries too little to classify and is usually a thumbnail, icon or tracking pixel.
MIN_SIDE = 16
# What PIL raises for damaged files besides OSError: plugins parse headers with struct and raise SyntaxError,
# ValueError or EOFError on nonsense.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageLoadError(Exception):
    """A file that cannot be used as an image; the message is the reason, for one-line reports."""


class NotAnImageError(ImageLoadError):
    """Not an image of a supported format at all (empty, unrecognised, refused format), as opposed to an image
    that is damaged, a bomb or too small: the server answers 415 for this and 422 for the others."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_8bit(values: np.ndarray, full_scale: float | None) -> Image.Image:
    """Greyscale ``L`` from raw values: divided by ``full_scale``, or stretched min..max when that is ``None``."""
    values = np.nan_to_num(values.astype(np.float64))
    if full_scale is None:
        low, high = float(values.min()), float(values.max())
        values, full_scale = values - low, (high - low) or 1.0
    return Image.fromarray(np.clip(np.rint(values * (255 / full_scale)), 0, 255).astype(np.uint8))


def _wide_to_l(image: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` and ``F`` greyscale to 8-bit by their full range, never clipped at 255 as ``convert`` does."""
    values = np.asarray(image)
    full_scale = 65535 if image.mode.startswith("I") else 1
    fits = 0 <= float(np.nanmin(values)) and float(np.nanmax(values)) <= full_scale
    return _to_8bit(values, full_scale if fits else None)


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image of ``image``: upright, first frame, transparency on white, wide modes scaled not
    clipped."""
    image = ImageOps.exif_transpose(image)
    if image.has_transparency_data:
        background = Image.new("RGBA", image.size, (*TRANSPARENCY_BACKGROUND, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        image = _wide_to_l(image)
    return image.convert("RGB")


def _check_size(size: tuple[int, int], min_side: int) -> None:
    """Refuse from the header alone, before ``load`` allocates pixels: bombs and images too small to use."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            f"possible decompression bomb: Image size ({width}x{height} pixels) exceeds limit of {MAX_PIXELS} pixels"
        )
    if min(width, height) < min_side:
        raise ImageLoadError(f"too small ({width}x{height} px; minimum side {min_side} px)")


def _draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The smallest size a JPEG may be decoded at (1/2, 1/4, 1/8 scale) and still give ``max_side`` on its long side."""
    scale = max_side / max(size)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


@contextmanager
def _load_errors() -> Iterator[None]:
    """Whatever PIL or the file system raises while reading an image, as an ``ImageLoadError`` with a short reason."""
    try:
        yield
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except UnidentifiedImageError:
        raise NotAnImageError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"possible decompression bomb: {error}") from None
    except DECODE_ERRORS as error:
        raise ImageLoadError(f"cannot decode: {error}") from None


def _open_supported(source: Path | io.BytesIO) -> Image.Image:
    image = Image.open(source)
    if image.format not in SUPPORTED_FORMATS:
        image.close()
        raise NotAnImageError(f"unsupported format {image.format}")
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the header alone, for a quick look at a dataset; ``ImageLoadError`` with the reason
    when the file is not a usable image (damage past the header is found only by decoding, as the audit does)."""
    with _load_errors(), _open_supported(Path(path)) as image:
        return image.size


def load_rgb(path: str | Path | bytes, max_side: int | None = None, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode ``path`` fully into an RGB image, raising ``ImageLoadError`` with a short reason on failure.

    Args:
        path: the image file, or its bytes (an upload, decoded in memory and never written to disk); the
            content decides the format, not the extension or a client's file name.
        max_side: when given, the result's longer side is at most this: JPEGs are decoded at a reduced scale
            (``Image.draft``) and everything is shrunk right after decoding, so a 4000x3000 photo never stays in
            memory at full size.
        min_side: images whose shorter side is below this are refused as too small.
    """
    source = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
    with _load_errors():
        if (len(path) if isinstance(path, bytes) else source.stat().st_size) == 0:
            raise NotAnImageError("empty file (0 bytes)")
        # PIL only warns between MAX_IMAGE_PIXELS and twice that and would then allocate; make it refuse instead.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_supported(source) as image:
                _check_size(image.size, min_side)
                if max_side is not None and max(image.size) > max_side:
                    image.draft(None, _draft_size(image.size, max_side))
                image.load()
                rgb = to_rgb(image)
    if max_side is not None:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb
