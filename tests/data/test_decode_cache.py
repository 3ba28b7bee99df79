"""The decoded-image cache: identical evaluation inputs, keyed by content, bounded on disk."""

import hashlib
import os

import torch

from tests.conftest import make_image
from tlbench.data.decode_cache import DecodedImageCache, prune
from tlbench.data.images import load_rgb
from tlbench.data.transforms import Preprocessing, eval_transform


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_later_loads_come_from_the_cache_not_the_original(tmp_path):
    photo = make_image(tmp_path / "big.png", (120, 80, 40), seed=1, size=600)
    content = sha(photo)
    pre = Preprocessing(input_size=224, interpolation="bicubic")
    cache = DecodedImageCache(pre.resize_size, pre.interpolation, tmp_path / "cache")
    first = cache.load(photo, content)
    assert min(first.size) == pre.resize_size and cache.entry(content).is_file()
    photo.write_bytes(b"")  # a decode from the original would now fail
    second = cache.load(photo, content)
    assert torch.equal(eval_transform(pre)(second), eval_transform(pre)(first))


def test_eval_tensor_equals_the_uncached_path(tmp_path):
    photo = make_image(tmp_path / "p.png", (10, 200, 90), seed=2, size=500)
    pre = Preprocessing(input_size=96, interpolation="bilinear")
    cached = DecodedImageCache(pre.resize_size, pre.interpolation, tmp_path / "c").load(photo, sha(photo))
    assert torch.equal(eval_transform(pre)(cached), eval_transform(pre)(load_rgb(photo)))


def test_key_is_content_and_size_and_small_images_are_not_upscaled(tmp_path):
    small = make_image(tmp_path / "s.png", (1, 2, 3), seed=3, size=40)
    cache = DecodedImageCache(256, "bilinear", tmp_path / "c")
    assert cache.load(small, sha(small)).size == (40, 40)
    assert cache.entry("ab" * 32) != DecodedImageCache(320, "bilinear", tmp_path / "c").entry("ab" * 32)
    assert cache.entry("ab" * 32) != cache.entry("cd" * 32)


def test_prune_deletes_oldest_first_down_to_the_bound(tmp_path):
    folder = tmp_path / "c" / "aa"
    folder.mkdir(parents=True)
    for age, name in enumerate(["old", "mid", "new"]):
        entry = folder / f"{name}.npy"
        entry.write_bytes(b"x" * 1000)
        os.utime(entry, (1000 + age, 1000 + age))
    assert prune(tmp_path / "c", max_bytes=2000) == 1
    assert sorted(p.stem for p in folder.iterdir()) == ["mid", "new"]
