"""``tlbench data split`` and ``tlbench data info``: look at a dataset without training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tlbench.data.discover import SKIP_BAD_FLAG, entry_problem, real_path
from tlbench.data.images import ImageLoadError, image_size
from tlbench.data.split import (
    DEFAULT_VAL_FRACTION,
    SELECT,
    SPLITS,
    default_split_path,
    imbalance_note,
    split_dataset,
    split_summary,
    write_split,
)
from tlbench.errors import TLBenchError


def split(
    root: str,
    split_seed: int = 0,
    output: str | None = None,
    labels_csv: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    allow_external_links: bool = False,
) -> None:
    """Write the split manifest a ``fit`` with the same root and seed would use.

    Args:
        root: dataset folder (class sub-folders, or train/ with val/ and/or test/, or images listed in labels_csv).
        split_seed: seed of the stratified 70/20/10 split (and of what is carved from train).
        output: where to write the CSV (default: lightning_logs/splits/<ROOT name>_seed<N>.csv).
        labels_csv: CSV with columns path,label[,split] labelling the images under ROOT.
        val_fraction: for a train/test layout, the part of train carved out as val.
        allow_external_links: follow image symlinks that lead outside ROOT.
    """
    result = split_dataset(
        root, split_seed, val_fraction=val_fraction, labels_csv=labels_csv, allow_external_links=allow_external_links
    )
    print(result.layout)
    path = write_split(result.table, output or default_split_path(root, split_seed))
    sizes = split_summary(result.table)
    print(f"{path}: {len(result.table)} images, {'/'.join(sizes)} = {'/'.join(str(n) for n in sizes.values())}")


def image_sizes(root: Path, paths: list[str], allow_external_links: bool = False) -> pd.DataFrame:
    """Width and height of every image from its header; one error line for the files that are not images, by the
    rule ``data audit`` and ``fit`` apply (``entry_problem``) before any header is read: a FIFO is never opened."""
    real_root = real_path(root)
    sizes, bad = [], []
    for relative in paths:
        problem = entry_problem(root / relative, real_root, allow_external_links)
        if problem:
            bad.append(f"{relative} ({problem})")
            continue
        try:
            sizes.append(image_size(root / relative))
        except ImageLoadError as error:
            bad.append(f"{relative} ({error})")
    if bad:
        listing = "; ".join(bad[:3]) + (f"; ... ({len(bad) - 3} more)" if len(bad) > 3 else "")
        raise TLBenchError(
            f"{len(bad)} unusable image file(s) under {root}: {listing}; remove or replace them"
            f" ('tlbench data audit {root}' lists them all; fit skips them with {SKIP_BAD_FLAG})"
        )
    return pd.DataFrame(sizes, columns=["width", "height"])


def info(
    root: str,
    split_seed: int = 0,
    labels_csv: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    allow_external_links: bool = False,
) -> None:
    """Layout, classes, image counts per split and image size statistics.

    Args:
        root: dataset folder (class sub-folders, or train/ with val/ and/or test/, or images listed in labels_csv).
        split_seed: seed of the split whose counts are shown.
        labels_csv: CSV with columns path,label[,split] labelling the images under ROOT.
        val_fraction: for a train/test layout, the part of train carved out as val.
        allow_external_links: follow image symlinks that lead outside ROOT.
    """
    result = split_dataset(
        root, split_seed, val_fraction=val_fraction, labels_csv=labels_csv, allow_external_links=allow_external_links
    )
    table = result.table
    print(result.layout)
    columns = [*SPLITS, *([SELECT] if SELECT in split_summary(table) else [])]
    counts = table.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=columns, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    frame = image_sizes(Path(root), list(table.path), allow_external_links)
    print(f"{Path(root).resolve()}: {len(counts)} classes, {len(table)} images")
    print(counts.to_string())
    print(frame.describe().loc[["min", "50%", "max"]].astype(int).rename(index={"50%": "median"}).to_string())
    note = imbalance_note(table)
    if note:
        print(f"note: {note}")
