"""What a feature cache holds and how it is computed, keyed and stored; ``callbacks/feature_cache.py:
FeatureCaching`` decides when a run uses one.

A ``FeatureSet`` is a network's output for every image of a split, in one or more views: the backbone's pooled
features (the head phase trains on them), or the activations after its first ``d`` frozen layers (fine-tune
validation runs only the trainable top on them).

On disk, entries live in the ``features`` kind of ``tlbench/cache.py`` (verified on every read, bounded,
least recently used evicted first). The key covers everything that changes a feature: the backbone's weights (a
hash of its tensors), the preprocessing, the transform (eval or augmented, view count, seed), and every image's
path, label and content hash, so a stale entry is never reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


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

    def to_bytes(self) -> bytes:
        """The cache payload: features, targets and rows as one ``torch.save`` archive."""
        buffer = io.BytesIO()
        torch.save({"features": self.features, "targets": self.targets, "rows": self.rows}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> FeatureSet:
        """The inverse of ``to_bytes``, for a payload the cache has verified (tensors only: ``weights_only``)."""
        stored = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        return cls(stored["features"], stored["targets"], stored["rows"])


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
def compute_features(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    views: int,
    batch_size: int,
    num_workers: int,
    seed: int,
    device: torch.device,
    description: str = "caching features",
    progress: bool | None = None,
) -> FeatureSet:
    """Run ``encoder`` over ``views`` passes of ``dataset``; each pass seeds its own random stream so augmented
    views are reproducible, and the training run's random streams (CPU and this device's) are left as they were.

    ``progress`` shows a progress bar titled ``description``; None shows it when stderr is a terminal.
    """
    show = sys.stderr.isatty() if progress is None else progress
    batches = views * math.ceil(len(dataset) / batch_size)
    per_view, targets, rows = [], None, None
    devices = [device] if device.type == "cuda" else []
    bar = tqdm(total=batches, desc=description, unit="batch", disable=not show)
    with torch.random.fork_rng(devices=devices), bar:
        for view in range(views):
            generator = torch.Generator().manual_seed(seed * 1000 + view)
            torch.manual_seed(seed * 1000 + view)
            loader = DataLoader(
                dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, generator=generator
            )
            outputs, view_targets, view_rows = [], [], []
            for images, batch_targets, batch_rows in loader:
                outputs.append(encoder(images.to(device)).float().cpu())
                view_targets.append(batch_targets)
                view_rows.append(batch_rows)
                bar.update()
            per_view.append(torch.cat(outputs))
            targets, rows = torch.cat(view_targets), torch.cat(view_rows)
    return FeatureSet(torch.stack(per_view), targets, rows)


def gather_shards(strategy, local: FeatureSet) -> FeatureSet:
    """Every process's share (through the Lightning ``strategy``'s ``reduce`` and ``all_gather``), padded to equal
    length for ``all_gather``, put back in row order."""
    size = torch.tensor([len(local.rows)])
    longest = int(strategy.reduce(size, reduce_op="max"))
    pad = longest - len(local.rows)
    padding = local.features.new_zeros(local.features.shape[0], pad, *local.features.shape[2:])
    features = torch.cat([local.features, padding], dim=1)
    targets = torch.nn.functional.pad(local.targets, (0, pad))
    rows = torch.nn.functional.pad(local.rows, (0, pad), value=-1)
    gathered = [strategy.all_gather(tensor) for tensor in (features.transpose(0, 1), targets, rows)]
    features, targets, rows = (tensor.flatten(0, 1) for tensor in gathered)
    keep = rows >= 0
    order = torch.argsort(rows[keep])
    return FeatureSet(
        features[keep][order].transpose(0, 1).contiguous(), targets[keep][order], rows[keep][order], local.depth
    )
