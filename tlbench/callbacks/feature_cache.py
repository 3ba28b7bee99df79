"""``FeatureCaching``: the one place that decides, epoch by epoch, whether a loader serves images or cached
network outputs, and that owns those caches.

Head phase: with the backbone frozen and in eval mode, its output for an image never changes between epochs, so
the head trains on features computed once. ``views=1`` caches the centre-crop (eval) features of each training
image: the classic linear-probe setup, cheapest, no augmentation. ``views=K>1`` caches K augmented views per
training image and epoch ``e`` trains on view ``e % K``: K backbone passes buy augmentation for the head.
Validation always uses one eval view. Entries are kept on disk for later runs (see models/feature_cache.py and
tlbench/cache.py).

Fine-tune phase: only the top blocks train, so the layers below them stay frozen and in eval mode: validation
images (centre crops, no augmentation) give the same activations at the top of those layers every epoch. They are
computed once (memory only, bounded by ``TRUNK_CACHE_BYTES``) and validation runs just the trainable top on them;
the numbers match running the whole network (tested).

Under DDP each process encodes its share of the images (every ``world_size``-th one) and the shares are gathered,
so every process holds the full cache and Lightning's distributed sampler splits the epochs.

The module adds this callback itself (``TransferLearningModule.configure_callbacks``) when ``cache_features`` is
on, so ``tlbench fit`` and a plain ``Trainer().fit(module, datamodule)`` behave the same. The datamodule
asks it for each loader's inputs when Lightning builds that loader (``ImageFolderDataModule.precomputed_inputs``),
and it tells the module what the batches then hold (``TransferLearningModule.set_batch_inputs``).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from tlbench.cache import Cache
from tlbench.models.backbones import evaluating
from tlbench.models.feature_cache import FeatureSet, cache_key, compute_features, gather_shards, weights_digest

# Trunk activations larger than this (all validation images together) are not cached; validation then runs whole.
TRUNK_CACHE_BYTES = 2 << 30

# Version of the image pipeline in the disk key; 2: uint8 loaders, normalised and laid out channels-last by the
# module. Entries of older pipelines are not reused.
PIPELINE_VERSION = 2


class FeatureCaching(pl.Callback):
    """Serve cached features to the head phase's loaders and cached frozen-layer activations to fine-tune
    validation.

    Args:
        views: feature views cached per training image (see the module docstring).
    """

    def __init__(self, views: int = 1) -> None:
        self.views = views
        self.trainer: pl.Trainer | None = None
        self._head: dict[str, FeatureSet] = {}
        self._trunk: FeatureSet | None = None
        self._reload_setting = 0

    @staticmethod
    def attached_to(trainer: pl.Trainer) -> FeatureCaching | None:
        return next((callback for callback in trainer.callbacks if isinstance(callback, FeatureCaching)), None)

    def caches_features(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` trains the head on cached features: a head-phase epoch, before the module's
        ``finetune_start`` (which ``head_patience`` may move earlier during the fit), of a fit with a datamodule."""
        return self.trainer is not None and epoch < self.trainer.lightning_module.finetune_start

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.datamodule is not None:
            self.trainer = trainer
            trainer.datamodule.precomputed_inputs = self.inputs_for

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """While the head trains on cached features, dataloaders are rebuilt every epoch: each epoch may use another
        cached view, and the first fine-tune epoch needs images again."""
        self._reload_setting = trainer.reload_dataloaders_every_n_epochs
        if self.caches_features(0):
            trainer.reload_dataloaders_every_n_epochs = 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning rebuilds the training loader before ``on_train_epoch_start`` but the validation loader only
        when validation starts, so rebuilding stops at the end of the first epoch without cached features: stopping
        earlier would validate the fine-tuned backbone on the head phase's stale cached features."""
        if not self.caches_features(trainer.current_epoch):
            trainer.reload_dataloaders_every_n_epochs = self._reload_setting
            self._head.clear()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand the loaders back to images: the test after fit, and a later ``validate`` or ``test``, must not see
        this fit's caches. (``teardown`` does it too, for a fit that ended in an error.)"""
        self._release(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release(trainer, pl_module)

    def _release(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.trainer is None:
            return
        trainer.datamodule.precomputed_inputs = None
        for split in ("train", "val"):
            pl_module.set_batch_inputs(split, "images")
        self._head.clear()
        self._trunk = None
        self.trainer = None

    # -- serving ------------------------------------------------------------------------------------------------
    def inputs_for(self, split: str) -> Dataset | None:
        """What ``split``'s loader serves this epoch instead of images, or None for images; the module is told what
        its batches hold. Pooled features while the head trains on the frozen backbone; while fine-tuning,
        validation activations at the top of the frozen layers (computed once)."""
        trainer = self.trainer
        module = trainer.lightning_module
        epoch = trainer.current_epoch
        cached = None
        if self.caches_features(epoch):
            cached = self._head_features(module, split)
        elif split == "val":
            cached = self._trunk_activations(module)
        if cached is None:
            module.set_batch_inputs(split, "images")
            return None
        module.set_batch_inputs(split, "pooled" if cached.depth is None else cached.depth)
        view = epoch % cached.features.shape[0] if split == "train" else 0
        return TensorDataset(cached.features[view], cached.targets, cached.rows)

    def _head_features(self, module, split: str) -> FeatureSet:
        """Features of ``split`` for the frozen backbone: from memory, the disk cache, or encoded."""
        if split not in self._head:
            self._head[split] = self._stored_or_encoded(module, split)
        return self._head[split]

    def _stored_or_encoded(self, module, split: str) -> FeatureSet:
        trainer, datamodule = self.trainer, self.trainer.datamodule
        augmented = split == "train" and self.views > 1 and datamodule.augment
        views = self.views if augmented else 1
        table = datamodule.prepare_split()
        rows_of = datamodule.validation_split if split == "val" else split  # the validation loader's table split
        in_split = table.loc[table.split == rows_of, ["path", "label", "sha256"]]
        files = [list(map(str, row)) for row in in_split.itertuples(index=False)]
        description = {
            "preprocessing": module.preprocessing.to_dict(),
            "augmented": augmented,
            "views": views,
            "seed": datamodule.split_seed,
            "pipeline": PIPELINE_VERSION,
        }
        if augmented and datamodule.augment_policy != "none":  # keyed only when on: earlier entries stay valid
            description["augment_policy"] = datamodule.augment_policy
        weights = weights_digest(module.backbone)

        def key(engine: str) -> str:
            """Features of another engine differ by float rounding: keyed apart, except torch's (earlier entries)."""
            keyed = description if engine == "torch" else {**description, "engine": engine}
            return cache_key(weights, keyed, files)

        cache = Cache("features")
        engine = module.engine_name()
        stored = cache.get(key(engine), FeatureSet.from_bytes)
        found = stored is not None
        if trainer.world_size > 1:  # every process uses the stored entry, or every process encodes
            found = trainer.strategy.reduce_boolean_decision(found, all=True)
        if found:
            module.engines_used["features"] = engine
            return stored
        title = f"caching features: {rows_of}" + (f" ({views} views)" if views > 1 else "")
        result = self._encode(module, rows_of, module.encode, title, views, augmented)
        if trainer.is_global_zero:
            cache.put(key(module.engines_used.get("features", engine)), result.to_bytes())
        return result

    def _trunk_activations(self, module) -> FeatureSet | None:
        """Eval-transform validation activations after the backbone's frozen layers, once per fit; None when no
        leading layer stays frozen or they would take more than ``TRUNK_CACHE_BYTES``."""
        if self._trunk is None and (depth := module.frozen_trunk_depth()) > 0:
            size = module.preprocessing.input_size
            with evaluating(module.backbone), torch.no_grad():
                one = module.backbone.forward_until(torch.zeros(1, 3, size, size, device=module.device), depth)
            datamodule = self.trainer.datamodule
            split = datamodule.validation_split
            images = int((datamodule.prepare_split().split == split).sum())
            if one.numel() * one.element_size() * images <= TRUNK_CACHE_BYTES:
                self._trunk = self._encode(
                    module,
                    split,
                    lambda batch: module.encode_until(batch, depth),
                    f"caching frozen-layer activations: {split}",
                )
                self._trunk.depth = depth
        return self._trunk

    def _encode(self, module, split: str, encoder, title: str, views: int = 1, augmented: bool = False) -> FeatureSet:
        """``encoder`` over ``split``'s images with the backbone in eval mode; under DDP each process encodes every
        ``world_size``-th image and the shares are gathered."""
        trainer, datamodule = self.trainer, self.trainer.datamodule
        dataset = datamodule.dataset(split, train_transforms=augmented)
        shard = Subset(dataset, range(trainer.global_rank, len(dataset), trainer.world_size))
        show = trainer.progress_bar_callback is not None and trainer.is_global_zero
        with evaluating(module.backbone):
            result = compute_features(
                encoder,
                shard,
                views,
                datamodule.batch_size,
                datamodule.num_workers,
                datamodule.split_seed,
                module.device,
                title,
                show,
            )
        return gather_shards(trainer.strategy, result) if trainer.world_size > 1 else result
