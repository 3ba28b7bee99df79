"""Label and split a data root: the stratified train/val/test split and its ``split.csv`` manifest.

Every model trained on the same data root with the same ``split_seed`` sees the identical split: samples are
sorted by path before a seeded shuffle per class, so the split depends only on the file names and the seed,
not on the file system's listing order or on the backbone.

Splits the data already has are kept (split folders, or the split column of a labels file); what is missing is
carved from train, stratified and seeded (``carve_from_train``):

* ``train/ val/ test/``: used as given;
* ``train/ test/`` (the most common published form): val is carved from train (``--data.val_fraction``), test
  stays the reported split;
* ``train/ val/``: val is the reported split, so that it does not also pick the checkpoint and the final phase a
  ``select`` split is carved from train (``--data.select_fraction``); the validation loader serves it, and val
  is read once per phase, after all training;
* class folders, or a labels file without a split column: stratified 70/20/10.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from tlbench.data.discover import (
    CLASS_FOLDERS,
    SPLIT_OF_NAME,
    Layout,
    Sample,
    check_class_names,
    check_root,
    detect_layout,
    external_links,
    refuse_external_links,
    scan_class_folders,
)
from tlbench.data.images import is_image_file
from tlbench.errors import TLBenchError
from tlbench.io import read_csv, write_csv
from tlbench.outputs import dataset_name, default_output

SPLITS = ("train", "val", "test")
# Held out of train to choose checkpoints and the final phase when val is the reported split.
SELECT = "select"
DEFAULT_FRACTIONS = (0.7, 0.2, 0.1)
DEFAULT_SELECT_FRACTION = 0.1
# Of train, carved out as val for a train/test layout, which has no val of its own.
DEFAULT_VAL_FRACTION = 0.1
MIN_IMAGES_PER_CLASS = 3
# A note (fit warns, data info prints it) when the largest training class has more than this many times the
# smallest one's images.
IMBALANCE_WARNING_RATIO = 3


class UnsplittableError(TLBenchError):
    """The images are found and labelled but cannot be split (too few classes or images): an audit still runs."""


@dataclass(frozen=True)
class DatasetSplit:
    """The split table (path, label, split) and the one line saying how the data root was read and split.
    ``selection_from_train``: the split that chooses checkpoints and the final phase was carved from the given
    train split, while the reported split was given separately and may come from another distribution."""

    table: pd.DataFrame
    layout: str
    selection_from_train: bool = False


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
        raise UnsplittableError(
            f"need at least 2 classes (one sub-folder of images per class), found {found}; add a folder of images"
            " per class"
        )
    small = {label: n for label, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if small:
        listing = ", ".join(f"'{label}' ({n})" for label, n in sorted(small.items()))
        raise UnsplittableError(
            f"classes with fewer than {MIN_IMAGES_PER_CLASS} images cannot be split into train/val/test: {listing};"
            " add images or remove those folders"
        )


def check_presplit(table: pd.DataFrame, where: str) -> None:
    """Refuse split data whose train split cannot teach every class that val and test ask about."""
    train_classes = set(table.loc[table.split == "train", "label"])
    if len(train_classes) < 2:
        raise UnsplittableError(
            f"{where}: the train split needs at least 2 classes with images; add training images of each class"
        )
    unknown = set(table.label) - train_classes
    if unknown:
        raise UnsplittableError(
            f"{where}: classes {sorted(unknown)} appear in val/test but not in train; add training images"
        )


def presplit_table(root: Path, folders: dict[str, Path], allow_external_links: bool = False) -> pd.DataFrame:
    """The images of split folders of class folders (``train/<class>/...``), each row in its folder's split."""
    rows = []
    for split, folder in folders.items():
        rows += [(s.path, s.label, split) for s in scan_class_folders(folder, root, allow_external_links)]
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def carve_from_train(table: pd.DataFrame, fraction: float, seed: int, into: str = SELECT) -> pd.DataFrame:
    """``table`` with ``fraction`` of each class's train rows (rounded, at least one where a class has two or
    more) moved to split ``into``, reproducibly for ``seed``; other splits are untouched. Gives a train/val
    layout its ``select`` split and a train/test layout its val split."""
    table = table.copy()
    if fraction == 0:
        return table
    rng = np.random.default_rng(seed)
    train = table[table.split == "train"]
    for label in sorted(set(train.label)):
        paths = sorted(train.path[train.label == label])
        if len(paths) < 2:
            continue
        n_carved = min(len(paths) - 1, max(1, round(len(paths) * fraction)))
        chosen = {paths[index] for index in rng.permutation(len(paths))[:n_carved]}
        table.loc[(table.split == "train") & table.path.isin(chosen), "split"] = into
    return table.sort_values(["split", "label", "path"], ignore_index=True)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def complete_split(
    given: pd.DataFrame, where: str, seed: int, val_fraction: float, select_fraction: float
) -> tuple[pd.DataFrame, str]:
    """The full split of labelled rows whose ``split`` is given (train with val and/or test) or empty (none
    given), and how it was made, for the layout line."""
    splits = set(given.split) - {""}
    if not splits:
        samples = [Sample(path, label) for path, label in zip(given.path, given.label)]
        if not samples:
            raise UnsplittableError(
                f"no images found under {where}; put them in class folders, {where}/<class>/<image>.jpg"
                " (jpg, png, bmp, webp, tif)"
            )
        return stratified_split(samples, seed), f"split 70/20/10 stratified, seed {seed}"
    check_presplit(given, where)
    table = given.sort_values(["split", "label", "path"], ignore_index=True)
    if {"val", "test"} <= splits:
        return table, "used as given"
    if "val" in splits:
        if not select_fraction:
            return table, "used as given; val also chooses checkpoints"
        how = f"used as given; select carved from train: {_percent(select_fraction)} stratified, seed {seed}"
        return carve_from_train(table, select_fraction, seed), how
    how = f"val carved from train: {_percent(val_fraction)} stratified, seed {seed}"
    return carve_from_train(table, val_fraction, seed, into="val"), how


def _row_numbers(mask: pd.Series) -> str:
    """CSV line numbers (the header is line 1) of the rows where ``mask`` holds, the first few."""
    lines = [str(index + 2) for index in mask[mask].index[:5]]
    return ", ".join(lines) + (" ..." if mask.sum() > 5 else "")


def _relative_path(value: str, root: Path) -> str | None:
    """A labels file's path as a POSIX path relative to ``root``; None when it points outside the root."""
    path = Path(value.replace("\\", "/")).expanduser()
    if path.is_absolute():
        try:
            path = path.relative_to(root.absolute())
        except ValueError:
            return None
    parts = PurePosixPath(path.as_posix()).parts
    return None if ".." in parts else PurePosixPath(*parts).as_posix()


def read_labels(path: str | Path, root: Path) -> pd.DataFrame:
    """The rows of a labels file (columns path,label[,split]; paths relative to ``root``) with ``split`` empty when
    not given, refused in one line when a row is unusable: the form annotation tools export."""
    path = Path(path).expanduser()
    fix = "pass a CSV with a header line path,label[,split] and one row per image"
    if not path.is_file():
        raise TLBenchError(f"--data.labels_csv {path} is not a file; {fix}")
    try:
        table = read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            encoding_errors="strict",
            skipinitialspace=True,
        )
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise TLBenchError(f"{path} is not a readable CSV ({str(error).splitlines()[0]}); {fix}") from None
    table.columns = [str(column).strip().lower() for column in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise TLBenchError(f"{path} has columns {list(table.columns)}, missing {sorted(missing)}; {fix}")
    table = table[[c for c in ("path", "label", "split") if c in table.columns]].apply(
        lambda column: column.str.strip()
    )
    if table.empty:
        raise TLBenchError(f"{path} lists no images; {fix}")
    blank = (table.path == "") | (table.label == "")
    if blank.any():
        raise TLBenchError(f"{path}: line(s) {_row_numbers(blank)} have an empty path or label; fill them or drop them")
    if "split" not in table:
        table["split"] = ""
    splits = table.split.str.lower().map(SPLIT_OF_NAME)
    unknown = splits.isna() & (table.split != "")
    if unknown.any() or (0 < (table.split == "").sum() < len(table)):
        raise TLBenchError(
            f"{path}: line(s) {_row_numbers(unknown | (table.split == ''))} have split"
            f" '{table.split[unknown | (table.split == '')].iloc[0]}'; give every row train, val or test, or drop the"
            " split column to split 70/20/10"
        )
    table["split"] = splits.fillna("")
    table["path"] = [_relative_path(value, root) for value in table.path]
    outside = table.path.isna()
    if outside.any():
        raise TLBenchError(
            f"{path}: line(s) {_row_numbers(outside)} name files outside {root}; give paths relative to it"
        )
    table = table.drop_duplicates(ignore_index=True)
    conflicting = table.path.duplicated(keep=False)
    if conflicting.any():
        raise TLBenchError(
            f"{path}: {table.path[conflicting].iloc[0]} is listed with different labels or splits;"
            " keep one row per image"
        )
    not_images = [p for p in table.path if not is_image_file(Path(p))]
    absent = [p for p in table.path if not (root / p).is_file()]
    for problem, paths in (
        ("are not image files (.jpg, .png, .bmp, .webp, .tif)", not_images),
        ("are missing", absent),
    ):
        if paths:
            raise TLBenchError(
                f"{path}: {len(paths)} listed file(s) {problem} under {root} (e.g. {', '.join(paths[:3])});"
                " fix the paths (relative to the data root) or drop those rows"
            )
    check_class_names(set(table.label), str(path))
    return table


def split_dataset(
    root: str | Path,
    seed: int = 0,
    select_fraction: float = DEFAULT_SELECT_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    labels_csv: str | Path | None = None,
    allow_external_links: bool = False,
) -> DatasetSplit:
    """Find the layout of a data root, label its images and split them; what ``fit``, ``data info`` and ``data
    audit`` all start from.

    Class folders are split stratified 70/20/10; split folders (or a labels file's split column) are used as given,
    with a train/test layout's val carved from train (``val_fraction``) and a train/val layout's ``select`` split
    carved from train (``select_fraction``; 0 keeps train whole and val then both selects and is reported).
    Image files that are symlinks leading out of ``root`` are refused unless ``allow_external_links``.
    """
    if not 0 <= select_fraction < 1:
        raise TLBenchError(
            f"--data.select_fraction {select_fraction} is outside [0, 1); pass e.g. 0.1, or 0 to select on val"
        )
    if not 0 < val_fraction < 1:
        raise TLBenchError(f"--data.val_fraction {val_fraction} is outside (0, 1); pass e.g. 0.1")
    root = check_root(root)
    given, kind = labelled_rows(root, labels_csv, allow_external_links)
    table, how = complete_split(given, str(root), seed, val_fraction, select_fraction)
    given_splits = set(given.split) - {""}
    carved = bool(given_splits) and (SELECT in set(table.split) or "val" not in given_splits)
    return DatasetSplit(table, f"layout: {kind} ({how})", selection_from_train=carved)


def labelled_rows(
    root: Path, labels_csv: str | Path | None = None, allow_external_links: bool = False
) -> tuple[pd.DataFrame, str]:
    """Every image of ``root`` labelled (path, label, split: '' where the layout gives none) and the layout's
    kind; symlinks out of ``root`` refused in one line unless ``allow_external_links``."""
    if labels_csv is not None:
        given, kind = read_labels(labels_csv, root), f"labels file {Path(labels_csv).name}"
    else:
        layout = detect_layout(root)
        given, kind = _folder_rows(root, layout, allow_external_links), layout.kind
    if not allow_external_links:
        refuse_external_links(root, external_links(root, given.path))
    return given, kind


def _folder_rows(root: Path, layout: Layout, allow_external_links: bool = False) -> pd.DataFrame:
    """The data entries of a folder layout (``scan_class_folders``): images, and the entries that cannot be read,
    which stay in the table so that the pre-flight reports them (``bad_files.csv``) instead of losing them."""
    if layout.kind == CLASS_FOLDERS:
        samples = scan_class_folders(root, allow_external_links=allow_external_links)
        return pd.DataFrame({"path": [s.path for s in samples], "label": [s.label for s in samples], "split": ""})
    return presplit_table(root, layout.folders, allow_external_links)


def make_split(
    root: str | Path, seed: int = 0, select_fraction: float = DEFAULT_SELECT_FRACTION, **options
) -> pd.DataFrame:
    """The split table (path, label, split) of ``split_dataset``, for callers that need no layout line."""
    return split_dataset(root, seed, select_fraction, **options).table


def imbalance_note(table: pd.DataFrame) -> str | None:
    """A line naming the largest and smallest training class and their ratio when it exceeds
    ``IMBALANCE_WARNING_RATIO``, with the options that compensate; None for balanced data."""
    counts = table[table.split == "train"].label.value_counts()
    if counts.empty:
        return None
    largest, smallest = counts.idxmax(), counts.idxmin()
    if counts[largest] <= IMBALANCE_WARNING_RATIO * counts[smallest]:
        return None
    return (
        f"class imbalance: largest class {largest} has {counts[largest]} images, smallest {smallest} has"
        f" {counts[smallest]} in train (ratio {counts[largest] / counts[smallest]:.1f});"
        " consider --model.class_weights balanced or --data.sampler balanced"
    )


def split_summary(table: pd.DataFrame) -> dict[str, int]:
    """Images per split; ``select`` only when the table has one."""
    counts = Counter(table.split)
    return {split: int(counts.get(split, 0)) for split in (*SPLITS, *([SELECT] if counts.get(SELECT) else []))}


def default_split_path(root: str | Path, seed: int) -> Path:
    """``lightning_logs/splits/<dataset>_seed<N>.csv``: where ``data split`` writes a manifest unless told."""
    return default_output("splits", f"{dataset_name(root)}_seed{seed}.csv")


def write_split(table: pd.DataFrame, path: str | Path) -> Path:
    return write_csv(path, table)


def read_split(path: str | Path) -> pd.DataFrame:
    table = read_csv(path, dtype=str, keep_default_na=False)
    missing = {"path", "label", "split"} - set(table.columns)
    if missing:
        raise TLBenchError(
            f"{path} is not a split file: missing columns {sorted(missing)}; pass the split.csv of a run or one"
            " written by 'tlbench data split'"
        )
    return table
