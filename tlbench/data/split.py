"""The stratified train/val/test split and its ``split.csv`` manifest.

Every model trained on the same data root with the same ``split_seed`` sees the identical split: samples are
sorted by path before a seeded shuffle per class, so the split depends only on the file names and the seed,
not on the file system's listing order or on the backbone.

A pre-split ``train/ val/`` layout without a test folder reports its official val split. So that val is not also
what picks the checkpoint and the final phase, a stratified ``select`` split is carved from train (see
``carve_selection``); the validation loader serves it, and val is read once per phase, after all training.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from tlbench.data.discover import Sample, check_root, find_split_folders, scan_class_folders
from tlbench.errors import TLBenchError
from tlbench.outputs import dataset_name, default_output

SPLITS = ("train", "val", "test")
# Held out of train to choose checkpoints and the final phase when val is the reported split.
SELECT = "select"
DEFAULT_FRACTIONS = (0.7, 0.2, 0.1)
DEFAULT_SELECT_FRACTION = 0.1
MIN_IMAGES_PER_CLASS = 3


def split_counts(n: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """Train/val/test counts for a class of ``n`` images: at least one image in each split, rounding to nearest."""
    if n < MIN_IMAGES_PER_CLASS:
        raise ValueError(f"a class needs at least {MIN_IMAGES_PER_CLASS} images, got {n}")
    n_test = max(1, round(n * fractions[2]))
    n_val = max(1, round(n * fractions[1]))
    return n - n_val - n_test, n_val, n_test


def stratified_split(
    samples: list[Sample], seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> pd.DataFrame:
    """Assign every sample to train/val/test, class by class, reproducibly for ``seed``."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample.path)
    check_class_sizes({label: len(paths) for label, paths in by_class.items()})
    rng = np.random.default_rng(seed)
    rows = []
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        order = rng.permutation(len(paths))
        n_train, n_val, _ = split_counts(len(paths), fractions)
        for rank, index in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            rows.append((paths[index], label, split))
    return pd.DataFrame(rows, columns=["path", "label", "split"]).sort_values(
        ["split", "label", "path"], ignore_index=True
    )


def check_class_sizes(counts: dict[str, int]) -> None:
    """Refuse data that cannot give every class a train, a val and a test image."""
    if len(counts) < 2:
        found = f"only class '{next(iter(counts))}'" if counts else "no class folders with images"
        raise TLBenchError(f"need at least 2 classes (one sub-folder of images per class), found {found}")
    small = {label: n for label, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if small:
        listing = ", ".join(f"'{label}' ({n})" for label, n in sorted(small.items()))
        raise TLBenchError(
            f"classes with fewer than {MIN_IMAGES_PER_CLASS} images cannot be split into train/val/test: {listing};"
            " add images or remove those folders"
        )


def presplit_table(root: Path, folders: dict[str, Path]) -> pd.DataFrame:
    """Use an already split ``train/ val/ [test/]`` layout as given."""
    rows = []
    for split, folder in folders.items():
        rows += [(s.path, s.label, split) for s in scan_class_folders(folder, base=root)]
    table = pd.DataFrame(rows, columns=["path", "label", "split"])
    train_classes = set(table.loc[table.split == "train", "label"])
    if len(train_classes) < 2:
        raise TLBenchError(f"{folders['train']} needs at least 2 class folders with images")
    unknown = set(table.label) - train_classes
    if unknown:
        raise TLBenchError(
            f"classes {sorted(unknown)} appear in val/test but not in {folders['train']}; add training images"
        )
    return table.sort_values(["split", "label", "path"], ignore_index=True)


def carve_selection(table: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """``table`` with ``fraction`` of each class's train rows (rounded, at least one where a class has two or
    more) moved to the ``select`` split, reproducibly for ``seed``; other splits are untouched."""
    table = table.copy()
    if fraction == 0:
        return table
    rng = np.random.default_rng(seed)
    train = table[table.split == "train"]
    for label in sorted(set(train.label)):
        paths = sorted(train.path[train.label == label])
        if len(paths) < 2:
            continue
        n_select = min(len(paths) - 1, max(1, round(len(paths) * fraction)))
        chosen = {paths[index] for index in rng.permutation(len(paths))[:n_select]}
        table.loc[(table.split == "train") & table.path.isin(chosen), "split"] = SELECT
    return table.sort_values(["split", "label", "path"], ignore_index=True)


def make_split(root: str | Path, seed: int = 0, select_fraction: float = DEFAULT_SELECT_FRACTION) -> pd.DataFrame:
    """The split table (path, label, split) for a data root: pre-split folders as given, else stratified 70/20/10.

    A pre-split layout without a test folder also gets a ``select`` split of ``select_fraction`` of train
    (``carve_selection``); 0 keeps train whole, and val then both selects and is reported.
    """
    if not 0 <= select_fraction < 1:
        raise TLBenchError(
            f"--data.select_fraction {select_fraction} is outside [0, 1); pass e.g. 0.1, or 0 to select on val"
        )
    root = check_root(root)
    folders = find_split_folders(root)
    if folders:
        table = presplit_table(root, folders)
        return table if "test" in folders else carve_selection(table, select_fraction, seed)
    samples = scan_class_folders(root)
    if not samples:
        raise TLBenchError(
            f"no images found under {root}; expected {root}/<class>/<image>.jpg (jpg, png, bmp, webp, tif)"
        )
    return stratified_split(samples, seed)


def split_summary(table: pd.DataFrame) -> dict[str, int]:
    """Images per split; ``select`` only when the table has one."""
    counts = Counter(table.split)
    return {split: int(counts.get(split, 0)) for split in (*SPLITS, *([SELECT] if counts.get(SELECT) else []))}


def default_split_path(root: str | Path, seed: int) -> Path:
    """``lightning_logs/splits/<dataset>_seed<N>.csv``: where ``data split`` writes a manifest unless told."""
    return default_output("splits", f"{dataset_name(root)}_seed{seed}.csv")


def write_split(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def read_split(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"path", "label", "split"} - set(table.columns)
    if missing:
        raise TLBenchError(f"{path} is not a split file: missing columns {sorted(missing)}")
    return table
