import timm
import torch
from PIL import Image

from tlbench.data.transforms import Preprocessing, eval_transform, train_transform
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
    assert train_transform(pre, augment=True)(image).shape == (3, 64, 64)
    assert torch.allclose(eval_transform(pre)(image), torch.ones(3, 64, 64))


def test_augmentation_is_switchable():
    pre = Preprocessing(input_size=32)
    image = Image.effect_noise((64, 64), 64).convert("RGB")
    torch.manual_seed(0)
    augmented = [train_transform(pre, augment=True)(image) for _ in range(2)]
    plain = [train_transform(pre, augment=False)(image) for _ in range(2)]
    assert not torch.equal(*augmented)
    assert torch.equal(*plain) and torch.equal(plain[0], eval_transform(pre)(image))
