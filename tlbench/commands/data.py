"""``tlbench data split`` and ``tlbench data info``: look at a dataset without training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tlbench.data.images import ImageLoadError, image_size
from tlbench.data.split import default_split_path, make_split, split_summary, write_split
from tlbench.errors import TLBenchError


def split(root: str, split_seed: int = 0, output: str | None = None) -> None:
    """Write the split manifest a ``fit`` with the same root and seed would use.

    Args:
        root: dataset folder (class sub-folders, or train/val[/test]).
        split_seed: seed of the stratified 70/20/10 split.
        output: where to write the CSV (default: lightning_logs/splits/<ROOT name>_seed<N>.csv).
    """
    table = make_split(root, split_seed)
    path = write_split(table, output or default_split_path(root, split_seed))
    sizes = split_summary(table)
    print(f"{path}: {len(table)} images, train/val/test = {sizes['train']}/{sizes['val']}/{sizes['test']}")


def info(root: str, split_seed: int = 0) -> None:
    """Classes, image counts per split and image size statistics.

    Args:
        root: dataset folder (class sub-folders, or train/val[/test]).
        split_seed: seed of the split whose counts are shown.
    """
    table = make_split(root, split_seed)
    counts = (
        table.groupby(["label", "split"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=["train", "val", "test"], fill_value=0)
    )
    counts["total"] = counts.sum(axis=1)
    sizes = []
    for relative in table.path:
        try:
            sizes.append(image_size(Path(root) / relative))
        except ImageLoadError as error:
            raise TLBenchError(
                f"{Path(root) / relative}: {error}; run 'python -m tlbench data audit {root}' to list every bad file"
            ) from None
    frame = pd.DataFrame(sizes, columns=["width", "height"])
    print(f"{Path(root).resolve()}: {len(counts)} classes, {len(table)} images")
    print(counts.to_string())
    print(frame.describe().loc[["min", "50%", "max"]].astype(int).rename(index={"50%": "median"}).to_string())
