"""The decoded-image cache: identical evaluation inputs, keyed by content, bounded on disk."""

import hashlib
import os

import pytest
import torch

from tests.conftest import make_image
from tlbench.cache import Cache
from tlbench.data.decode_cache import DecodedImageCache
from tlbench.data.images import load_rgb
from tlbench.data.transforms import Preprocessing, eval_transform


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / "cache"))


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_later_loads_come_from_the_cache_not_the_original(tmp_path):
    photo = make_image(tmp_path / "big.png", (120, 80, 40), seed=1, size=600)
    content = sha(photo)
    pre = Preprocessing(input_size=224, interpolation="bicubic")
    cache = DecodedImageCache(pre.resize_size, pre.interpolation)
    first = cache.load(photo, content)
    assert min(first.size) == pre.resize_size and cache.cache.path(cache.key(content)).is_file()
    photo.write_bytes(b"")  # a decode from the original would now fail
    second = cache.load(photo, content)
    assert torch.equal(eval_transform(pre)(second), eval_transform(pre)(first))


def test_eval_tensor_equals_the_uncached_path(tmp_path):
    photo = make_image(tmp_path / "p.png", (10, 200, 90), seed=2, size=500)
    pre = Preprocessing(input_size=96, interpolation="bilinear")
    cached = DecodedImageCache(pre.resize_size, pre.interpolation).load(photo, sha(photo))
    assert torch.equal(eval_transform(pre)(cached), eval_transform(pre)(load_rgb(photo)))


def test_key_is_content_and_size_and_small_images_are_not_upscaled(tmp_path):
    small = make_image(tmp_path / "s.png", (1, 2, 3), seed=3, size=40)
    cache = DecodedImageCache(256, "bilinear")
    assert cache.load(small, sha(small)).size == (40, 40)
    assert cache.key("ab" * 32) != DecodedImageCache(320, "bilinear").key("ab" * 32)
    assert cache.key("ab" * 32) != cache.key("cd" * 32)


def test_prune_deletes_least_recently_used_first_down_to_the_limit(tmp_path, monkeypatch):
    cache = DecodedImageCache(256, "bilinear")
    paths = {}
    for age, name in enumerate(["old", "mid", "new"]):
        photo = make_image(tmp_path / f"{name}.png", (age, 0, 0), seed=age, size=20)
        cache.load(photo, sha(photo))
        paths[name] = cache.cache.path(cache.key(sha(photo)))
        os.utime(paths[name], (1000 + age, 1000 + age))
    limit = paths["mid"].stat().st_size + paths["new"].stat().st_size
    monkeypatch.setenv("TLBENCH_CACHE_DECODED_LIMIT", str(limit))
    assert Cache("decoded").prune() == 1
    assert sorted(name for name, path in paths.items() if path.exists()) == ["mid", "new"]
