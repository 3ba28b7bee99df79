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

A server decoding uploads from strangers also passes a ``DecodeBudget``: a 200 KB PNG can claim 88 million
16-bit pixels, under ``MAX_PIXELS`` yet gigabytes once decoded and converted. With a budget, JPEGs are decoded
at a reduced scale, every image is shrunk by an integer factor right after decoding (before the copies that
orientation, transparency and RGB conversion make), and an image whose decoding alone would need more than
``max_bytes`` is refused from its header with ``ImageTooLargeError``.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


class ImageTooLargeError(ImageLoadError):
    """Decoding would need more memory than the ``DecodeBudget`` allows (the server answers 413)."""


@dataclass(frozen=True)
class DecodeBudget:
    """How much decoding one image may cost: ``max_bytes`` of pixel memory at most, and no more resolution kept
    than ``short_side`` on the shorter side (the caller resizes to about that anyway, e.g. twice the model's
    resize size), so JPEGs decode at 1/2..1/8 scale and other images are box-reduced right after decoding."""

    short_side: int
    max_bytes: int


class NotAnImageError(ImageLoadError):
    """Not an image of a supported format at all (empty, unrecognised, refused format), as opposed to an image
    that is damaged, a bomb or too small: the server answers 415 for this and 422 for the others."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _strips(image: Image.Image) -> Iterator[np.ndarray]:
    """The pixel values of ``image`` a band of rows at a time (about a million pixels each), so converting a large
    wide-mode image never holds more than one band of ``float64`` copies."""
    width, height = image.size
    rows = max(1, 2**20 // width)
    for top in range(0, height, rows):
        yield np.asarray(image.crop((0, top, width, min(height, top + rows))))


def _wide_to_l(image: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` and ``F`` greyscale to 8-bit by their full range, never clipped at 255 as ``convert`` does:
    divided by the full scale (65535 or 1) when the values fit in it, else stretched from their min to their max.
    Computed band by band, with the same float64 arithmetic per pixel as on the whole array at once."""
    full_scale = 65535 if image.mode.startswith("I") else 1
    # Whether the values fit ignores NaN; the stretch, as before, sees NaN as 0 and infinities as the float extremes.
    raw_low, raw_high, low, high = [], [], [], []
    for values in _strips(image):
        raw_low.append(np.nanmin(values))
        raw_high.append(np.nanmax(values))
        finite = np.nan_to_num(values.astype(np.float64))
        low.append(finite.min())
        high.append(finite.max())
    fits = 0 <= float(np.nanmin(raw_low)) and float(np.nanmax(raw_high)) <= full_scale
    offset = 0.0 if fits else float(min(low))
    scale = full_scale if fits else (float(max(high)) - offset) or 1.0
    out = np.empty((image.height, image.width), dtype=np.uint8)
    top = 0
    for values in _strips(image):
        finite = np.nan_to_num(values.astype(np.float64))
        if not fits:
            finite = finite - offset
        out[top : top + len(values)] = np.clip(np.rint(finite * (255 / scale)), 0, 255).astype(np.uint8)
        top += len(values)
    return Image.fromarray(out)


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


# Pixel memory a decode under a budget may hold at its peak, in bytes per pixel, by the mode PIL decodes to: the
# decoded buffer (PIL keeps RGB, LA, CMYK... in 4 bytes a pixel, I;16 in 2) plus what shrinking it copies at full
# size: wide modes become an 8-bit L first, palette images RGB(A), and ``reduce`` premultiplies alpha into a copy.
PEAK_BYTES_PER_PIXEL = {"1": 2, "L": 1, "P": 9, "I;16": 3, "I;16B": 3, "I;16L": 3, "I": 5, "F": 5, "RGB": 4}
PEAK_BYTES_OTHER = 12  # LA, RGBA, PA, CMYK, YCbCr...: 4 decoded, up to 8 more while shrinking
# A progressive JPEG keeps the DCT coefficients of the whole image whatever scale it is decoded at: 2 bytes each,
# up to 3 components at full resolution.
PROGRESSIVE_JPEG_BYTES_PER_PIXEL = 6


def _decode_bytes(image: Image.Image, header_size: tuple[int, int]) -> int:
    """Peak pixel memory to decode and shrink ``image`` (already drafted), from its header alone."""
    width, height = image.size
    peak = width * height * PEAK_BYTES_PER_PIXEL.get(image.mode, PEAK_BYTES_OTHER)
    if image.format in ("JPEG", "MPO") and (image.info.get("progressive") or image.info.get("progression")):
        peak += header_size[0] * header_size[1] * PROGRESSIVE_JPEG_BYTES_PER_PIXEL
    return peak


def _check_budget(image: Image.Image, header_size: tuple[int, int], max_bytes: int) -> None:
    needed = _decode_bytes(image, header_size)
    if needed > max_bytes:
        width, height = header_size
        fit = math.sqrt(max_bytes / needed)
        raise ImageTooLargeError(
            f"too large to decode here: {width}x{height} {image.format} {image.mode} needs {needed / 2**20:.0f} MiB"
            f" (limit {max_bytes / 2**20:g} MiB); send it at most {int(width * fit)}x{int(height * fit)} px"
        )


def _shrunk(image: Image.Image, short_side: int) -> Image.Image:
    """``image`` (loaded) upright and box-reduced by the largest integer factor that keeps ``short_side``, before
    ``to_rgb`` makes its full-size copies. Orientation is applied first and in place (no copy when upright),
    since a reduced copy would lose a TIFF's orientation tag."""
    ImageOps.exif_transpose(image, in_place=True)
    factor = min(image.size) // short_side
    if factor < 2:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        if image.has_transparency_data:  # rare: keep to_rgb's handling, after an 8-bit RGBA conversion
            image = image.convert("RGBA")
        else:
            image = _wide_to_l(image)
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):  # reduce would average palette indices
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    return image.reduce(factor)


def _short_side_draft(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """The draft request keeping ``short_side`` on the shorter side (JPEG picks the smallest scale at least this)."""
    scale = short_side / min(size)
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


def load_rgb(
    path: str | Path | bytes, max_side: int | None = None, min_side: int = MIN_SIDE, budget: DecodeBudget | None = None
) -> Image.Image:
    """Decode ``path`` fully into an RGB image, raising ``ImageLoadError`` with a short reason on failure.

    Args:
        path: the image file, or its bytes (an upload, decoded in memory and never written to disk); the
            content decides the format, not the extension or a client's file name.
        max_side: when given, the result's longer side is at most this: JPEGs are decoded at a reduced scale
            (``Image.draft``) and everything is shrunk right after decoding, so a 4000x3000 photo never stays in
            memory at full size.
        min_side: images whose shorter side is below this are refused as too small.
        budget: when given, decoding is bounded in memory (see ``DecodeBudget``); images that would need more are
            refused with ``ImageTooLargeError`` before decoding. Without it (training, evaluation) an image is
            decoded at full size, exactly as always.
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
                if budget is not None:
                    header_size = image.size
                    if min(image.size) > budget.short_side:
                        image.draft(None, _short_side_draft(image.size, budget.short_side))
                    _check_budget(image, header_size, budget.max_bytes)
                image.load()
                rgb = to_rgb(image if budget is None else _shrunk(image, budget.short_side))
    if max_side is not None:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb
