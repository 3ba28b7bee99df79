"""Head-phase features computed once: with the backbone frozen and in eval mode, its output for an image never
changes between epochs, so the head trains on cached tensors at the cost of one backbone pass.

``views=1`` caches the centre-crop (eval) features of each training image: the classic linear-probe setup,
cheapest, no augmentation. ``views=K>1`` caches K augmented views per training image and epoch ``e`` trains on
view ``e % K``: K backbone passes buy augmentation for the head. Validation always uses one eval view.

Under DDP each process encodes its share of the images (every ``world_size``-th one) and the shares are
gathered, so every process holds the full cache and Lightning's distributed sampler splits the head's epochs.

Caches live in memory for the run and on disk under ``$TLBENCH_CACHE_DIR/features`` (default
``~/.cache/tlbench/features``) for later runs. The key covers everything that changes a feature: the backbone's
weights (a hash of its tensors), the preprocessing, the transform (eval or augmented, view count, seed), and
every image's path, label and content hash, so a stale cache is never reused.

Fine-tuning trains only the top blocks, so the layers below them stay frozen and in eval mode: validation
images (centre crops, no augmentation) give the same activations at the top of those layers every epoch.
``trunk_activations`` computes them once per fine-tune phase (memory only, bounded by ``TRUNK_CACHE_BYTES``)
and validation runs just the trainable top on them; the numbers match running the whole network (tested).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tlbench.io import atomic_write, cache_dir
from tlbench.models.backbones import evaluating


# Trunk activations larger than this (all validation images together) are not cached; validation then runs whole.
TRUNK_CACHE_BYTES = 2 << 30


@dataclass
class FeatureSet:
    """``features[view, image]`` with the images' targets and split-table rows.

    ``depth`` says what a feature is: None for the backbone's pooled output, ``d`` for the activations after the
    first ``d`` layers of its ``layer_chain()``.
    """

    features: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    depth: int | None = None


class CachedFeatureDataset(Dataset):
    """One view of a ``FeatureSet``, yielding ``(feature, target, row)`` like the image datasets do."""

    def __init__(self, cached: FeatureSet, view: int) -> None:
        self.features = cached.features[view % cached.features.shape[0]]
        self.targets = cached.targets
        self.rows = cached.rows

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.features[index], self.targets[index], self.rows[index]


def weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(weights: str, description: dict, files: list[tuple[str, str, str]]) -> str:
    """Key over the backbone weights digest, the transform description and every (path, label, content hash)."""
    payload = json.dumps({"weights": weights, "transform": description, "files": files}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@torch.inference_mode()
def compute_features(encoder: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, views: int, batch_size: int, num_workers: int, seed: int, device: torch.device) -> FeatureSet:
    """Run ``encoder`` over ``views`` passes of ``dataset``; each pass seeds its own random stream so augmented
    views are reproducible, and the training run's random stream is left as it was."""
    per_view, targets, rows = [], None, None
    with torch.random.fork_rng(devices=[]):
        for view in range(views):
            generator = torch.Generator().manual_seed(seed * 1000 + view)
            torch.manual_seed(seed * 1000 + view)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, generator=generator)
            outputs, view_targets, view_rows = [], [], []
            for images, batch_targets, batch_rows in loader:
                outputs.append(encoder(images.to(device)).float().cpu())
                view_targets.append(batch_targets)
                view_rows.append(batch_rows)
            per_view.append(torch.cat(outputs))
            targets, rows = torch.cat(view_targets), torch.cat(view_rows)
    return FeatureSet(torch.stack(per_view), targets, rows)


def _gather_shards(trainer, local: FeatureSet) -> FeatureSet:
    """Every process's share, padded to equal length for ``all_gather``, put back in row order."""
    size = torch.tensor([len(local.rows)])
    longest = int(trainer.strategy.reduce(size, reduce_op="max"))
    pad = longest - len(local.rows)
    features = torch.cat([local.features, local.features.new_zeros(local.features.shape[0], pad, *local.features.shape[2:])], dim=1)
    targets = torch.nn.functional.pad(local.targets, (0, pad))
    rows = torch.nn.functional.pad(local.rows, (0, pad), value=-1)
    gathered = [trainer.strategy.all_gather(tensor) for tensor in (features.transpose(0, 1), targets, rows)]
    features, targets, rows = (tensor.flatten(0, 1) for tensor in gathered)
    keep = rows >= 0
    order = torch.argsort(rows[keep])
    return FeatureSet(features[keep][order].transpose(0, 1).contiguous(), targets[keep][order], rows[keep][order], local.depth)


def _world(module) -> tuple[int, int]:
    trainer = module._trainer
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def encode_split(module, split: str, datamodule, encoder, views: int = 1, augmented: bool = False) -> FeatureSet:
    """``encoder`` over ``split``'s images with the backbone in eval mode; under DDP each process encodes every
    ``world_size``-th image and the shares are gathered."""
    world, rank = _world(module)
    dataset = datamodule.dataset(split, train_transforms=augmented)
    shard = Subset(dataset, range(rank, len(dataset), world))
    with evaluating(module.backbone):
        result = compute_features(encoder, shard, views, datamodule.batch_size, datamodule.num_workers, datamodule.split_seed, module.device)
    return _gather_shards(module._trainer, result) if world > 1 else result


def head_features(module, split: str, datamodule) -> FeatureSet:
    """Features of ``split`` for ``module``'s frozen backbone: from the disk cache, or encoded (sharded under DDP)."""
    augmented = split == "train" and module.hparams.cached_views > 1 and datamodule.augment
    views = module.hparams.cached_views if augmented else 1
    rows = datamodule.prepare_split()
    files = [list(map(str, row)) for row in rows.loc[rows.split == split, ["path", "label", "sha256"]].itertuples(index=False)]
    # "pipeline" 2: uint8 loaders, normalised and laid out channels-last by the module; older entries are not reused.
    description = {"preprocessing": module.preprocessing.to_dict(), "augmented": augmented, "views": views, "seed": datamodule.split_seed, "pipeline": 2}
    path = cache_dir("features") / f"{cache_key(weights_digest(module.backbone), description, files)}.pt"
    world, rank = _world(module)
    found = path.is_file() if world == 1 else module._trainer.strategy.reduce_boolean_decision(path.is_file(), all=True)
    if found:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureSet(stored["features"], stored["targets"], stored["rows"])
    result = encode_split(module, split, datamodule, module.encode, views, augmented)
    if rank == 0:
        atomic_write(path, lambda tmp: torch.save({"features": result.features, "targets": result.targets, "rows": result.rows}, tmp), durable=False)
    return result


def trunk_activations(module, split: str, datamodule, depth: int) -> FeatureSet | None:
    """Eval-transform activations of ``split`` after the backbone's first ``depth`` (frozen) layers, or None when
    they would take more than ``TRUNK_CACHE_BYTES``."""
    size = module.preprocessing.input_size
    with evaluating(module.backbone), torch.no_grad():
        one = module.encode_until(torch.zeros(1, 3, size, size, device=module.device), depth)
    images = int((datamodule.prepare_split().split == split).sum())
    if one.numel() * one.element_size() * images > TRUNK_CACHE_BYTES:
        return None
    result = encode_split(module, split, datamodule, lambda batch: module.encode_until(batch, depth))
    result.depth = depth
    return result
