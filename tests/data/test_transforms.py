import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tlbench.data.preprocessing import eval_array
from tlbench.data.transforms import Preprocessing, RandomWarp, eval_transform, loader_transform
from tlbench.models.backbones import create_backbone


def preprocessing_of(name: str) -> Preprocessing:
    return Preprocessing.from_timm_config(timm.create_model(name, pretrained=False).pretrained_cfg)


def test_backbones_bring_their_own_input_size_and_normalisation():
    assert preprocessing_of("inception_v3").input_size == 299
    assert preprocessing_of("inception_v3").mean == (0.5, 0.5, 0.5)
    assert preprocessing_of("legacy_xception").input_size == 299
    assert preprocessing_of("vgg16").input_size == 224
    assert preprocessing_of("vgg16").mean == (0.485, 0.456, 0.406)


def test_embedded_efficientnet_lite_weights_use_tf_normalisation():
    pre = create_backbone("efficientnet_lite0").preprocessing
    assert (pre.input_size, pre.mean, pre.std, pre.interpolation) == (224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert create_backbone("efficientnet_lite2").preprocessing.input_size == 260


def test_transforms_give_the_network_input_shape():
    pre = Preprocessing(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = Image.new("RGB", (300, 100), (255, 255, 255))
    assert eval_transform(pre)(image).shape == (3, 64, 64)
    for augment in (True, False):
        loaded = loader_transform(pre, augment)(image)
        assert loaded.shape == (3, 64, 64) and loaded.dtype == torch.uint8
    assert torch.allclose(eval_transform(pre)(image), torch.ones(3, 64, 64))


def test_loader_images_normalised_by_the_model_are_bit_identical_to_the_eval_transform():
    pre = Preprocessing(input_size=48, interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image = Image.effect_noise((90, 70), 80).convert("RGB")
    batch = torch.stack([loader_transform(pre, augment=False)(image)] * 2)
    assert torch.equal(pre.normalize(batch)[0], eval_transform(pre)(image))


def test_augmentation_is_switchable():
    pre = Preprocessing(input_size=32)
    image = Image.effect_noise((64, 64), 64).convert("RGB")
    torch.manual_seed(0)
    augmented = [loader_transform(pre, augment=True)(image) for _ in range(2)]
    plain = [loader_transform(pre, augment=False)(image) for _ in range(2)]
    assert not torch.equal(*augmented)
    assert torch.equal(*plain)


def test_random_warp_crops_and_flips_in_one_resampling():
    """With zoom, rotation and shift pinned to nothing the warp samples pixel centres exactly: each output is the
    image or its mirror, and both occur."""
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    warp = RandomWarp(32, 64, "bilinear", scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0, translate=0)
    torch.manual_seed(0)
    outputs = [np.asarray(warp(image)) for _ in range(20)]
    assert all(np.array_equal(out, pixels) or np.array_equal(out, pixels[:, ::-1]) for out in outputs)
    assert {np.array_equal(out, pixels) for out in outputs} == {True, False}


def test_random_warp_shrinks_large_photos_before_warping():
    """A 4000x3000 photo is first brought to the resize size with antialiasing: a fine checkerboard averages to grey
    instead of aliasing into stripes."""
    board = (np.indices((3000, 4000)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([board] * 3, axis=-1))
    torch.manual_seed(0)
    out = np.asarray(RandomWarp(64, 73, "bilinear", degrees=0, translate=0)(image)).astype(float)
    assert abs(out[16:48, 16:48].mean() - 127.5) < 10 and out[16:48, 16:48].std() < 10


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_the_numpy_eval_preprocessing_is_bit_identical_to_the_eval_transform(interpolation):
    """What classify runs without torch (models/graph_classifier.py) must be exactly what it runs with torch:
    odd margins (the crop offsets round half to even), portrait and landscape, an image already at the size."""
    rng = np.random.default_rng(0)
    for width, height in [(40, 90), (257, 301), (224, 224), (256, 256), (1000, 333), (260, 259), (299, 150)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for size, crop_pct in [(224, 0.875), (260, 1.0), (299, 0.9), (192, 0.95)]:
            pre = Preprocessing(input_size=size, interpolation=interpolation, crop_pct=crop_pct)
            assert np.array_equal(eval_array(image, pre), eval_transform(pre)(image).numpy()), (width, height, size)
