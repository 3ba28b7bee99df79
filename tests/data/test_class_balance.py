"""Class imbalance controls: the fit-start warning, ``--data.sampler balanced`` and ``--model.class_weights``."""

import warnings
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from tests.conftest import COLOURS, TINY_FIT_ARGS, make_image, run_cli
from tlbench.data.datamodule import EpochOrder, ImageFolderDataModule
from tlbench.models.module import TransferLearningModule


def make_imbalanced(root: Path, sizes: dict[str, int]) -> Path:
    for c, (name, count) in enumerate(sizes.items()):
        for i in range(count):
            make_image(root / name / f"img_{i:03d}.png", COLOURS[c], seed=c * 1000 + i)
    return root


@pytest.fixture
def imbalanced(tmp_path: Path) -> Path:
    return make_imbalanced(tmp_path / "skewed", {"common": 40, "rare": 8})


def test_train_class_counts_follow_the_train_split(imbalanced):
    data = ImageFolderDataModule(str(imbalanced), num_workers=0)
    table = data.prepare_split()
    train = table[table.split == "train"].label.value_counts()
    assert data.train_class_counts() == [train["common"], train["rare"]]
    assert data.train_class_counts()[0] > 3 * data.train_class_counts()[1]


def test_imbalance_warning_names_both_classes_and_the_fixes(imbalanced, tiny_dataset):
    with pytest.warns(Warning, match=r"class imbalance: largest class common has \d+ images, smallest rare") as w:
        ImageFolderDataModule(str(imbalanced), num_workers=0).setup("fit")
    assert "--model.class_weights balanced or --data.sampler balanced" in str(w[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ImageFolderDataModule(str(tiny_dataset), num_workers=0).setup("fit")
    assert not [w for w in caught if "class imbalance" in str(w.message)]


def test_balanced_sampler_draws_classes_evenly_as_many_times_as_there_are_images(imbalanced):
    data = ImageFolderDataModule(str(imbalanced), num_workers=0, sampler="balanced", batch_size=64)
    data.setup("fit")
    loader = data.train_dataloader()
    order = loader.sampler
    assert isinstance(order, EpochOrder) and order.weights is not None
    n_train = sum(data.train_class_counts())
    assert len(order) == n_train
    counts = Counter()
    for epoch in range(10):
        order.set_epoch(epoch)
        counts += Counter(i for i, _ in order)
    rare_share = sum(n for i, n in counts.items() if data.dataset("train").targets[i] == 1) / (10 * n_train)
    assert 0.4 < rare_share < 0.6  # ~0.15 with plain shuffling
    first = list(order)
    torch.manual_seed(1)
    assert list(order) == first  # follows the run's seed and the epoch, not the global stream


def test_balanced_sampler_also_draws_the_cached_features_of_the_head_phase(imbalanced):
    data = ImageFolderDataModule(str(imbalanced), num_workers=0, sampler="balanced")
    data.setup("fit")
    n_train, n_rare = sum(data.train_class_counts()), data.train_class_counts()[1]
    targets = torch.tensor([0] * (n_train - n_rare) + [1] * n_rare)
    data.precomputed_inputs = lambda split: TensorDataset(torch.zeros(n_train, 4), targets, torch.arange(n_train))
    loader = data.train_dataloader()
    assert loader.sampler.weights is not None and len(loader.sampler) == n_train
    default = ImageFolderDataModule(str(imbalanced), num_workers=0)
    default.setup("fit")
    default.precomputed_inputs = data.precomputed_inputs
    assert default.train_dataloader().sampler.weights is None


def test_balanced_class_weights_follow_sklearn_and_stay_out_of_checkpoints():
    module = TransferLearningModule(
        backbone="cnn1",
        pretrained=False,
        input_size=32,
        head_hidden=0,
        class_weights="balanced",
        label_smoothing=0.0,  # the plain weighted cross-entropy, to compare with torch's
        classes=["a", "b"],
    )
    module.set_class_weights([30, 10])
    assert torch.allclose(module.loss_fn.weight, torch.tensor([40 / 60, 40 / 20]))
    assert not any(key.startswith("loss_fn") for key in module.state_dict())
    logits, targets = torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([2 / 3, 2.0]))
    assert torch.allclose(module.loss_fn(logits, targets), expected)


def test_fit_with_balanced_weights_and_sampler_through_the_cli(imbalanced, tmp_path):
    result = run_cli(
        "fit",
        "--data.root",
        str(imbalanced),
        *TINY_FIT_ARGS,
        "--model.class_weights",
        "balanced",
        "--data.sampler",
        "balanced",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class imbalance: largest class common" in result.stderr
    config = (tmp_path / "lightning_logs" / "skewed_cnn1" / "version_0" / "config.yaml").read_text()
    assert "class_weights: balanced" in config and "sampler: balanced" in config


def test_a_fit_weighs_the_loss_with_the_datamodules_class_counts(imbalanced, tmp_path):
    module = TransferLearningModule(
        backbone="cnn1", pretrained=False, input_size=32, head_hidden=0, head_epochs=1, finetune_epochs=0,
        class_weights="balanced",
    )  # fmt: skip
    data = ImageFolderDataModule(str(imbalanced), num_workers=0, batch_size=16)
    trainer = pl.Trainer(
        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.fit(module, data)
    common, rare = data.train_class_counts()
    n = common + rare
    assert torch.allclose(module.loss_fn.weight, torch.tensor([n / (2 * common), n / (2 * rare)]))
