"""Shapes real datasets come in: many tiny classes, heavy imbalance, greyscale, 16-bit and float scans, thumbnails."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_image
from tlbench.__main__ import main
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.split import imbalance_note, make_split
from tlbench.data.transforms import Preprocessing
from tlbench.errors import TLBenchError


def noise(seed: int, size: int, level: float, spread: float, dtype: str, channels: int = 0) -> np.ndarray:
    """A distinct picture per seed around ``level`` (so the audit sees no duplicates), clipped to ``dtype``."""
    shape = (size, size, channels) if channels else (size, size)
    values = np.random.default_rng(seed).normal(level, spread, shape)
    if np.dtype(dtype).kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def grey_image(path: Path, seed: int, size: int = 24, level: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(seed, size, level, 40, "uint8")).save(path)
    return path


def test_200_classes_of_3_to_5_images_split_with_every_class_in_every_split(tmp_path, capsys):
    root = tmp_path / "many"
    for c in range(200):
        for i in range(3 + c % 3):
            grey_image(root / f"species {c:03d}" / f"{i}.png", 10 * c + i, size=16)
    table = make_split(root)
    per_split = table.groupby("split").label.nunique().to_dict()
    assert per_split == {"train": 200, "val": 200, "test": 200} and len(table) == 67 * 3 + 67 * 4 + 66 * 5
    assert main(["data", "info", str(root)]) == 0
    assert "200 classes, 799 images" in capsys.readouterr().out
    for i in range(2):
        grey_image(root / "species 200" / f"{i}.png", 5000 + i, size=16)
    with pytest.raises(TLBenchError, match=r"fewer than 3 images .*'species 200' \(2\); add images or remove"):
        make_split(root)


def imbalanced_split(root: Path, large: int = 100, small: int = 2) -> Path:
    """``train/ val/ test/`` used as given, so the training classes keep exactly ``large`` and ``small`` images."""
    for s, (split, counts) in enumerate((("train", (large, small)), ("val", (1, 1)), ("test", (1, 1)))):
        for c, (name, count) in enumerate(zip(("common", "rare"), counts)):
            for i in range(count):
                grey_image(root / split / name / f"{i}.png", 1000 * s + 500 * c + i, 16)
    return root


def test_a_class_50_times_larger_warns_with_the_ratio_and_the_remedies(tmp_path, capsys):
    root = imbalanced_split(tmp_path / "skewed")
    note = imbalance_note(make_split(root))
    assert note == (
        "class imbalance: largest class common has 100 images, smallest rare has 2 in train (ratio 50.0);"
        " consider --model.class_weights balanced or --data.sampler balanced"
    )
    data = ImageFolderDataModule(str(root), num_workers=0, decode_cache=False)
    data.preprocessing = Preprocessing(input_size=16)
    with pytest.warns(UserWarning, match=r"ratio 50\.0\);"):
        data.setup("fit")
    assert main(["data", "info", str(root)]) == 0
    assert f"note: {note}" in capsys.readouterr().out


def test_an_all_greyscale_dataset_trains_as_three_equal_channels(tmp_path, capsys):
    root = tmp_path / "xray"
    for c, level in enumerate((60, 190)):
        for i in range(5):
            grey_image(root / f"class_{c}" / f"{i}.png", 10 * c + i, level=level)
    assert Image.open(root / "class_0" / "0.png").mode == "L"
    data = ImageFolderDataModule(str(root), num_workers=0, decode_cache=False, augment=False)
    data.preprocessing = Preprocessing(input_size=24, crop_pct=1.0)
    data.setup("fit")
    image, target, _ = data.dataset("train")[0]
    assert image.shape == (3, 24, 24) and image.dtype.is_floating_point is False
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()
    assert main(["data", "info", str(root)]) == 0 and "2 classes, 10 images" in capsys.readouterr().out


def write_rgb48_tiff(path: Path, pixels: np.ndarray) -> Path:
    """A scanner's 16-bit-per-channel RGB TIFF (uncompressed, one strip), which PIL can read but not write."""
    height, width, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    tags = [(256, width), (257, height), (258, None), (259, 1), (262, 2), (273, None), (277, 3), (278, height)]
    tags += [(279, len(data)), (284, 1)]
    bits_offset = 8 + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\0" + struct.pack("<IH", 8, len(tags)))
    for tag, value in tags:
        if tag == 258:
            out += struct.pack("<HHII", tag, 3, 3, bits_offset)
        elif tag in (273, 279):
            out += struct.pack("<HHII", tag, 4, 1, bits_offset + 6 if tag == 273 else value)
        else:
            out += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def test_16_bit_and_float_tiff_scans_become_8_bit_rgb_by_their_full_range(tmp_path):
    root = tmp_path / "scans"
    for folder in ("grey16", "float"):
        (root / folder).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(noise(i, 24, 32768, 2000, "uint16")).save(root / "grey16" / f"{i}.tif")
        Image.fromarray(noise(10 + i, 24, 0.5, 0.03, "float32")).save(root / "float" / f"{i}.tif")
        pixels = noise(20 + i, 24, 0, 2000, "int32", channels=3) + np.array([65535, 32768, 0])
        write_rgb48_tiff(root / "rgb48" / f"{i}.tif", np.clip(pixels, 0, 65535).astype(np.uint16))
    assert {Image.open(root / folder / "0.tif").mode for folder in ("grey16", "float")} == {"I;16", "F"}
    data = ImageFolderDataModule(str(root), num_workers=0, decode_cache=False, augment=False)
    data.preprocessing = Preprocessing(input_size=24, crop_pct=1.0)
    data.setup("fit")
    dataset = data.dataset("train")
    means = {data.classes[target]: image.float().mean(dim=(1, 2)).tolist() for image, target, _ in dataset}
    expected = {"float": (128, 128, 128), "grey16": (128, 128, 128), "rgb48": (253, 128, 3)}
    assert means.keys() == expected.keys()
    for name, mean in means.items():
        assert np.allclose(mean, expected[name], atol=3), (name, mean)  # clipped at 255 or 8-bit scale: far off


def test_thumbnails_are_upscaled_with_one_warning(tmp_path):
    root = tmp_path / "thumbs"
    for c in range(2):
        for i in range(6):
            grey_image(root / f"class_{c}" / f"{i}.png", 10 * c + i, size=20 + 2 * i)
    data = ImageFolderDataModule(str(root), num_workers=0, decode_cache=False, augment=False)
    data.preprocessing = Preprocessing()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup("fit")
    small = [str(w.message) for w in caught if "upscaled" in str(w.message)]
    assert len(small) == 1 and small[0].startswith("12 of 12 images have a shorter side under 112 px (smallest 20 px)")
    assert data.dataset("train")[0][0].shape == (3, 224, 224)
    large = ImageFolderDataModule(str(root), num_workers=0, decode_cache=False)
    large.preprocessing = Preprocessing(input_size=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        large.setup("fit")
    assert not [w for w in caught if "upscaled" in str(w.message)]


def test_the_scan_records_image_sizes_in_its_cache(tmp_path):
    root = tmp_path / "sizes"
    for c in range(2):
        for i in range(3):
            make_image(root / f"class_{c}" / f"{i}.png", (200, 20 + 80 * c, 20), seed=10 * c + i, size=30 + i)
    first = ImageFolderDataModule(str(root), num_workers=0)
    first.prepare_split()
    again = ImageFolderDataModule(str(root), num_workers=0)
    again.prepare_split()  # from the scan cache
    assert first.image_sizes == again.image_sizes and sorted(set(first.image_sizes.values())) == [
        (30, 30),
        (31, 31),
        (32, 32),
    ]
