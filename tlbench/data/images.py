"""The one image conversion every command uses (train, evaluate, check, classify, serve).

Keeping it in one place means a photo is seen the same way everywhere: EXIF orientation applied, the first
frame of animated or multi-page files, transparency composited on white, every mode converted to 8-bit RGB.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
TRANSPARENCY_BACKGROUND = (255, 255, 255)


class ImageLoadError(Exception):
    """A file that cannot be used as an image; the message is the reason, for one-line reports."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without saturating 16-bit or dropping transparency onto black."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, TRANSPARENCY_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L") if image.mode != "I" else image.convert("L")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image, raising ``ImageLoadError`` with a short reason on failure."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError("empty file (0 bytes)")
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            return to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"cannot decode: {error}") from None


def find_unreadable(root: Path, relative_paths: list[str]) -> list[tuple[str, str]]:
    """``(path, reason)`` for every file under ``root`` that does not decode, checked before any training starts."""
    bad = []
    for relative in relative_paths:
        try:
            load_rgb(root / relative)
        except ImageLoadError as error:
            bad.append((relative, str(error)))
    return bad
