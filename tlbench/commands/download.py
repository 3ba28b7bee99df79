"""``python -m tlbench data download NAME``: rebuild one of the 2017 study's datasets from its original source."""

from __future__ import annotations

import sys

from tlbench.commands import show_progress
from tlbench.data.download import FAILURE_REPORT, download_dataset


def download(
    name: str,
    root: str = "data",
    mirror: str | None = None,
    per_class: int = 200,
    force: bool = False,
    progress: bool | None = None,
) -> None:
    """Download dataset NAME (leaves, birds, butterflies, noodles, dogs) into ROOT/NAME/<class>/*.jpg.

    Archives are cached in ROOT/.downloads and resumed if interrupted; the dataset folder only appears once
    it is complete, so a half-finished run never looks like data to training commands.

    Args:
        name: leaves, birds, butterflies, noodles or dogs.
        root: Folder that receives ROOT/NAME.
        mirror: Base URL replacing scheme and host of every download URL (a local copy of the hosts' paths).
        per_class: Open Images datasets only: at most this many images per class.
        force: Rebuild ROOT/NAME and download again even if it exists.
        progress: Progress bars on stderr (default: only when stderr is a terminal).
    """
    result = download_dataset(name, root, mirror, per_class, force, show_progress(progress))
    if result.existed:
        print(f"{result.path} already exists (pass --force to download it again)", file=sys.stderr)
        return
    if result.failures:
        print(f"{result.failures} image(s) failed; see {FAILURE_REPORT} in the dataset folder", file=sys.stderr)
    summary = ", ".join(f"{label} {count}" for label, count in sorted(result.counts.items()))
    print(f"{result.path}: {sum(result.counts.values())} images ({summary})")
