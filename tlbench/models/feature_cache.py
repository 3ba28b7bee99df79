"""Head-phase features computed once: with the backbone frozen and in eval mode, its output for an image never
changes between epochs, so the head trains on cached tensors at the cost of one backbone pass.

``views=1`` caches the centre-crop (eval) features of each training image: the classic linear-probe setup,
cheapest, no augmentation. ``views=K>1`` caches K augmented views per training image and epoch ``e`` trains on
view ``e % K``: K backbone passes buy augmentation for the head. Validation always uses one eval view.

Caches live in memory for the run and on disk under ``$TLBENCH_CACHE_DIR/features`` (default
``~/.cache/tlbench/features``) for later runs. The key covers everything that changes a feature: the backbone's
weights (a hash of its tensors), the preprocessing, the transform (eval or augmented, view count, seed), and
every image's path, label and content hash, so a stale cache is never reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlbench.io import atomic_write, cache_dir


@dataclass
class FeatureSet:
    """``features[view, image]`` with the images' targets and split-table rows."""

    features: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor


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
def compute_features(encoder: nn.Module, dataset: Dataset, views: int, batch_size: int, num_workers: int, seed: int, device: torch.device) -> FeatureSet:
    """Run ``encoder`` over ``views`` passes of ``dataset``; each pass re-seeds so augmented views are reproducible."""
    per_view, targets, rows = [], None, None
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


def load_or_compute(key: str, compute) -> FeatureSet:
    """The disk cache entry for ``key``, or ``compute()`` saved under it (atomically, so a kill leaves no stub)."""
    path = cache_dir("features") / f"{key}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return FeatureSet(stored["features"], stored["targets"], stored["rows"])
        except Exception:  # a cache entry from another torch version or a damaged file: recompute
            path.unlink(missing_ok=True)
    result = compute()
    atomic_write(path, lambda tmp: torch.save({"features": result.features, "targets": result.targets, "rows": result.rows}, tmp))
    return result
