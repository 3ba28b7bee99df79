"""Learning-rate range tests for both phases of the recipe, with Lightning's ``Tuner.lr_find``.

Each phase trains different parameters with its own optimizer, so each gets its own search: the head phase's
(``head_lr``) on the frozen backbone, fed cached features when ``cache_features`` is on, and the fine-tune
phase's (``finetune_lr``) on images. A fine-tune search from a random head would mostly measure how fast the head
learns, so the head is trained first, as in a fit: ``head_epochs`` epochs at the configured ``head_lr`` on the
training images' centre-crop features (a constant rate and no augmentation, which is what the search needs: a
head that already separates the classes, not the best head).

A search sweeps its rates over ``num_training`` optimizer steps, but a fit's epochs bound them: on 100 images,
10 head epochs of 3 batches end the sweep at a third of the range, whose suggestion is then meaningless. So each
search runs in a phase widened to enough epochs for every step (``phase_for_search``), restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.tuner import Tuner
from torch.utils.data import DataLoader, TensorDataset

from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.models.feature_cache import compute_features
from tlbench.models.module import TransferLearningModule, build_optimizer


def _search(
    module: TransferLearningModule,
    datamodule: ImageFolderDataModule,
    trainer: pl.Trainer,
    attr_name: str,
    plot_path: Path,
    num_training: int,
) -> float | None:
    """One range test for the learning rate in ``module.hparams[attr_name]`` (left unchanged); the loss-vs-rate
    curve with its suggestion goes to ``plot_path``. None when the search had too few steps to suggest a rate."""
    finder = Tuner(trainer).lr_find(
        module, datamodule=datamodule, attr_name=attr_name, num_training=num_training, update_attr=False
    )
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    finder.plot(suggest=finder.suggestion() is not None, ax=figure.add_subplot())
    figure.axes[0].set_title(f"{attr_name} range test ({module.hparams.backbone})")
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(plot_path, format="png", dpi=100)
    return finder.suggestion()


@contextmanager
def phase_for_search(
    module: TransferLearningModule,
    datamodule: ImageFolderDataModule,
    trainer: pl.Trainer,
    phase: str,
    num_training: int,
) -> Iterator[None]:
    """The module set to ``phase`` alone, for as many epochs as ``num_training`` steps need (at least the phase's
    own), and ``trainer``'s budget to match: the schedule neither switches phase nor ends the fit mid-sweep. The
    module's epoch settings are restored on exit (the trainer is the search's own)."""
    hp = module.hparams
    saved = hp.head_epochs, hp.finetune_epochs, module.finetune_start
    epochs = math.ceil(num_training / math.ceil(len(datamodule.dataset("train")) / datamodule.batch_size))
    if phase == "head":
        hp.head_epochs, hp.finetune_epochs = max(hp.head_epochs, epochs), 0
    else:
        hp.head_epochs, hp.finetune_epochs = 0, max(hp.finetune_epochs, epochs)
    module.finetune_start = hp.head_epochs
    trainer.fit_loop.max_epochs = module.total_epochs
    module.apply_phase(phase)
    try:
        yield
    finally:
        hp.head_epochs, hp.finetune_epochs, module.finetune_start = saved


def train_head(module: TransferLearningModule, datamodule: ImageFolderDataModule, device: torch.device) -> None:
    """``head_epochs`` epochs of the head on the frozen backbone's centre-crop features of the training split."""
    hp = module.hparams
    module.apply_phase("head")
    module.to(device)
    features = compute_features(
        module.encode,
        datamodule.dataset("train"),
        1,
        datamodule.batch_size,
        datamodule.num_workers,
        datamodule.split_seed,
        device,
        "lr_find: caching head features",
        False,
    )
    optimizer = build_optimizer(hp.head_optimizer, module.head.parameters(), hp.head_lr, hp.momentum, hp.weight_decay)
    loader = DataLoader(TensorDataset(features.features[0], features.targets), datamodule.batch_size, shuffle=True)
    module.head.train()
    for _ in range(hp.head_epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            module.loss_fn(module.head(inputs.to(device)), targets.to(device)).backward()
            optimizer.step()
    module.cpu()


def find_learning_rates(
    module: TransferLearningModule,
    datamodule: ImageFolderDataModule,
    make_trainer: Callable[[], pl.Trainer],
    plot_dir: Path,
    num_training: int = 100,
) -> dict[str, float | None]:
    """Suggested ``head_lr`` and ``finetune_lr`` (for the phases the module runs; None where the search stopped
    too early to suggest one), each curve plotted to ``plot_dir/<name>.png``. ``make_trainer`` gives a fresh
    trainer for each search."""
    hp = module.hparams
    module.plan_finetune(sum(datamodule.train_class_counts()))
    suggestions: dict[str, float | None] = {}
    if hp.head_epochs > 0:
        trainer = make_trainer()
        with phase_for_search(module, datamodule, trainer, "head", num_training):
            suggestions["head_lr"] = _search(
                module, datamodule, trainer, "head_lr", plot_dir / "head_lr.png", num_training
            )
    if hp.finetune_epochs > 0:
        trainer = make_trainer()
        if hp.head_epochs > 0:
            train_head(module, datamodule, trainer.strategy.root_device)
        cache_features, hp.cache_features = hp.cache_features, False  # the fine-tune search trains on images
        try:
            with phase_for_search(module, datamodule, trainer, "finetune", num_training):
                suggestions["finetune_lr"] = _search(
                    module, datamodule, trainer, "finetune_lr", plot_dir / "finetune_lr.png", num_training
                )
        finally:
            hp.cache_features = cache_features
    return suggestions
