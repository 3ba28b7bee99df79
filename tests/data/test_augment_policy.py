"""``--data.augment_policy``: RandAugment / TrivialAugment on training images only, reproducible, keyed in the
feature cache; everything else bit-identical when off."""

import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from tests.models.test_feature_cache import head_only
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.transforms import Preprocessing, loader_transform

PRE = Preprocessing(input_size=32)


def noise() -> Image.Image:
    return Image.effect_noise((48, 48), 64).convert("RGB")


def seeded(transform, image: Image.Image, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(image)


def test_policy_none_is_the_plain_warp_bit_for_bit():
    image = noise()
    assert torch.equal(seeded(loader_transform(PRE, True), image), seeded(loader_transform(PRE, True, "none"), image))


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_policies_change_training_images_and_follow_the_torch_seed(policy):
    image = noise()
    transform = loader_transform(PRE, True, policy)
    out = seeded(transform, image)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert torch.equal(out, seeded(transform, image))  # reproducible from torch's seed alone
    plain = loader_transform(PRE, True)
    assert any(not torch.equal(seeded(transform, image, s), seeded(plain, image, s)) for s in range(5))


def test_policy_touches_only_the_training_split(tiny_dataset):
    plain = ImageFolderDataModule(str(tiny_dataset), num_workers=0)
    policy = ImageFolderDataModule(str(tiny_dataset), num_workers=0, augment_policy="randaugment")
    for data in (plain, policy):
        data.setup("fit")
    for split in ("val", "test"):
        assert all(torch.equal(a[0], b[0]) for a, b in zip(plain.dataset(split), policy.dataset(split)))
    torch.manual_seed(0)
    with_policy = [item[0] for item in policy.dataset("train", train_transforms=True)]
    torch.manual_seed(0)
    without = [item[0] for item in plain.dataset("train", train_transforms=True)]
    assert any(not torch.equal(a, b) for a, b in zip(with_policy, without))


def test_policy_without_augment_is_refused_in_one_line(tiny_dataset, tmp_path):
    result = run_cli(
        "fit", "--data.root", str(tiny_dataset), "--data.augment", "false", "--data.augment_policy", "randaugment",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: --data.augment_policy randaugment")


def test_cached_augmented_views_are_keyed_on_the_policy(tiny_dataset, tmp_path):
    views = ("--model.cached_views", "2", "--data.augment", "true")
    head_only(tiny_dataset, tmp_path / "plain", "true", *views)
    entries = set((tmp_path / "cache" / "features").glob("*.entry"))
    assert len(entries) == 2  # train (2 views) and val
    head_only(tiny_dataset, tmp_path / "policy", "true", *views, "--data.augment_policy", "trivialaugment")
    added = set((tmp_path / "cache" / "features").glob("*.entry")) - entries
    assert len(added) == 1  # new training views; validation's centre crops are shared
