"""``load_rgb``/``to_rgb``: every mode to correct 8-bit RGB, and damaged or hostile files refused with a reason."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tlbench.data.images import MAX_PIXELS, DecodeBudget, ImageLoadError, ImageTooLargeError, load_rgb, to_rgb

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    """JPEG shifts colours a little; a wrong conversion is off by far more than this."""
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


def refused(path: Path, **options) -> str:
    with pytest.raises(ImageLoadError) as caught:
        load_rgb(path, **options)
    return str(caught.value)


def test_truncated_jpeg_is_refused(tmp_path, photo):
    path = photo(tmp_path / "cut.jpg", image=Image.effect_noise((256, 256), 60).convert("RGB"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert refused(path).startswith("cannot decode: image file is truncated")


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.jpg").touch()
    assert refused(tmp_path / "empty.jpg") == "empty file (0 bytes)"


def test_text_named_jpg_is_refused(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    assert refused(tmp_path / "notes.jpg") == "not an image (unrecognised format)"


def test_format_outside_the_supported_list_is_refused_before_decoding(tmp_path, photo):
    path = photo(tmp_path / "icon.png", format="ICO")
    assert refused(path) == "unsupported format ICO"


def test_cmyk_jpeg_keeps_its_colour(tmp_path, photo):
    path = photo(tmp_path / "cmyk.jpg", image=Image.new("CMYK", (32, 32), (0, 255, 255, 0)), quality=95)
    image = load_rgb(path)
    assert image.mode == "RGB" and close_to(image.getpixel((16, 16)), RED)


def test_16_bit_mid_grey_png_stays_mid_grey(tmp_path, photo):
    path = photo(tmp_path / "grey16.png", image=Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)))
    assert Image.open(path).mode == "I;16"
    assert load_rgb(path).getpixel((5, 5)) == (128, 128, 128)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full((20, 20), 32768, dtype=np.int32), 128),  # "I" holding 16-bit data, as older PIL opens 16-bit PNGs
        (np.full((20, 20), 0.5, dtype=np.float32), 128),  # "F" in 0..1
    ],
)
def test_32_bit_modes_are_scaled_by_their_range_not_clipped(values, expected):
    image = Image.fromarray(values)
    assert image.mode in ("I", "F")
    assert to_rgb(image).getpixel((0, 0)) == (expected,) * 3


def test_float_outside_0_1_is_stretched_to_its_min_and_max():
    values = np.zeros((20, 20), dtype=np.float32)
    values[:, 10:] = 4000.0
    rgb = to_rgb(Image.fromarray(values))
    assert rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((15, 0)) == WHITE


def test_transparent_rgba_is_composited_on_white(tmp_path, photo):
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 128), (16, 0, 32, 32))
    rgb = load_rgb(photo(tmp_path / "alpha.png", image=rgba))
    assert rgb.getpixel((0, 0)) == WHITE
    assert close_to(rgb.getpixel((24, 0)), (127, 127, 127), tolerance=1)


def test_palette_transparency_is_composited_on_white(tmp_path, photo):
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])  # index 0 black (transparent), index 1 red
    palette.paste(1, (16, 0, 32, 32))
    rgb = load_rgb(photo(tmp_path / "palette.png", image=palette, transparency=0))
    assert rgb.getpixel((0, 0)) == WHITE and rgb.getpixel((24, 0)) == RED


def test_one_bit_image_becomes_black_and_white(tmp_path, photo):
    bits = Image.new("1", (32, 32), 0)
    bits.paste(1, (16, 0, 32, 32))
    rgb = load_rgb(photo(tmp_path / "bits.png", image=bits))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((24, 0)) == WHITE


def test_exif_orientation_is_applied(tmp_path, photo):
    stored = Image.new("RGB", (80, 40), RED)
    stored.paste(BLUE, (40, 0, 80, 40))  # stored sideways: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    rgb = load_rgb(photo(tmp_path / "phone.jpg", image=stored, exif=exif, quality=95))
    assert rgb.size == (40, 80)
    assert close_to(rgb.getpixel((20, 10)), RED) and close_to(rgb.getpixel((20, 70)), BLUE)


def test_animated_gif_gives_its_first_frame(tmp_path, photo):
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, BLUE, WHITE)]
    path = photo(tmp_path / "anim.gif", image=frames[0], save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 3
    assert load_rgb(path).getpixel((16, 16)) == RED


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose IHDR is patched (with a correct CRC) to claim ``width`` x ``height`` pixels."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def pixel_allocations(monkeypatch) -> list[tuple[int, int]]:
    """Sizes at which PIL began decoding (allocating the pixel buffer)."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


@pytest.mark.parametrize("side", [40000, 10000])  # beyond PIL's hard limit, and where PIL only warns
def test_decompression_bomb_is_refused_before_allocating(tmp_path, pixel_allocations, recwarn, side):
    path = bomb_png(tmp_path / "bomb.png", side, side)
    assert path.stat().st_size < 100
    assert refused(path).startswith("possible decompression bomb")
    assert pixel_allocations == []
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]  # an error, not a warning


def test_bomb_is_refused_even_when_another_library_disabled_pils_check(tmp_path, pixel_allocations, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    reason = refused(bomb_png(tmp_path / "bomb.png", 40000, 40000))
    assert reason.startswith("possible decompression bomb") and str(MAX_PIXELS) in reason
    assert pixel_allocations == []


def test_too_small_image_is_refused_with_a_configurable_minimum(tmp_path, photo):
    path = photo(tmp_path / "tiny.png", image=Image.new("RGB", (12, 40)))
    assert refused(path) == "too small (12x40 px; minimum side 16 px)"
    assert load_rgb(path, min_side=8).size == (12, 40)


def test_max_side_decodes_a_large_jpeg_at_reduced_scale(tmp_path, photo, pixel_allocations):
    path = photo(tmp_path / "big.jpg", image=Image.new("RGB", (4000, 3000), RED))
    rgb = load_rgb(path, max_side=512)
    assert rgb.size == (512, 384) and close_to(rgb.getpixel((100, 100)), RED)
    assert set(pixel_allocations) == {(1000, 750)}  # decoded at 1/4 scale, never 4000x3000


def test_budget_decodes_jpeg_reduced_and_shrinks_others_right_after_decoding(tmp_path, photo, pixel_allocations):
    budget = DecodeBudget(short_side=256, max_bytes=64 * 2**20)
    jpeg = photo(tmp_path / "big.jpg", image=Image.new("RGB", (4000, 3000), RED))
    rgb = load_rgb(jpeg, budget=budget)
    assert set(pixel_allocations) == {(500, 375)}  # 1/8 scale keeps a short side >= 256
    assert rgb.size == (500, 375) and close_to(rgb.getpixel((100, 100)), RED)
    stored = Image.new("RGB", (3000, 1500), RED)
    stored.paste(BLUE, (1500, 0, 3000, 1500))
    exif = Image.Exif()
    exif[0x0112] = 6  # upright is 1500x3000, red on top
    rgb = load_rgb(photo(tmp_path / "phone.png", image=stored, exif=exif), budget=budget)
    assert rgb.size == (300, 600)  # reduced by 5, orientation kept
    assert rgb.getpixel((150, 60)) == RED and rgb.getpixel((150, 540)) == BLUE
    grey16 = photo(tmp_path / "grey16.png", image=Image.fromarray(np.full((2000, 1000), 32768, dtype=np.uint16)))
    assert load_rgb(grey16, budget=budget).getpixel((5, 5)) == (128, 128, 128)


def test_budget_refuses_from_the_header_what_it_cannot_decode_cheaply(tmp_path, pixel_allocations):
    path = tmp_path / "bomb16.png"
    Image.fromarray(np.zeros((3000, 3000), dtype=np.uint16)).save(path)
    with pytest.raises(ImageTooLargeError) as caught:
        load_rgb(path, budget=DecodeBudget(short_side=256, max_bytes=16 * 2**20))
    assert str(caught.value).startswith("too large to decode here: 3000x3000 PNG I;16 needs 26 MiB (limit 16 MiB)")
    assert pixel_allocations == []
