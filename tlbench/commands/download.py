"""``tlbench data download NAME``: rebuild one of the 2017 study's datasets from its original source."""

from __future__ import annotations

import sys

from tlbench.commands import show_progress
from tlbench.data.download import FAILURE_REPORT, MAX_EXTRACT_BYTES, MAX_EXTRACT_RATIO, TRUST_FILE, download_dataset
from tlbench.errors import TLBenchError


def download(
    name: str,
    data_dir: str = "data",
    mirror: str | None = None,
    per_class: int = 200,
    force: bool = False,
    progress: bool | None = None,
    max_extract_gb: float = MAX_EXTRACT_BYTES / 10**9,
    max_extract_ratio: float = MAX_EXTRACT_RATIO,
) -> None:
    """Download dataset NAME (leaves, birds, butterflies, noodles, dogs) into DATA_DIR/NAME/<class>/*.jpg.

    DATA_DIR is a folder of datasets, as ``grid --data_dir``: the dataset itself, DATA_DIR/NAME, is what
    ``--data.root`` takes elsewhere. Archives are cached in DATA_DIR/.downloads and resumed if interrupted; the
    dataset folder only appears once it is complete, so a half-finished run never looks like data to training
    commands. An archive without a published SHA-256 is trusted on first use: its SHA-256 is printed, recorded in
    DATA_DIR/.downloads/trusted_sha256.json and required of every later download into DATA_DIR.

    Args:
        name: leaves, birds, butterflies, noodles or dogs.
        data_dir: folder of datasets that receives DATA_DIR/NAME (not the dataset folder itself).
        mirror: Base URL replacing scheme and host of every download URL (a local copy of the hosts' paths).
        per_class: Open Images datasets only: at most this many images per class.
        force: Rebuild DATA_DIR/NAME and download again even if it exists.
        progress: Progress bars on stderr (default: only when stderr is a terminal).
        max_extract_gb: Refuse an archive that unpacks to more than this many GB (10^9 bytes).
        max_extract_ratio: Refuse an archive that unpacks to more than this many times its own size (a zip bomb).
    """
    if not (max_extract_gb > 0 and max_extract_ratio > 0):
        raise TLBenchError(
            f"--max_extract_gb {max_extract_gb} and --max_extract_ratio {max_extract_ratio}: pass numbers above 0"
        )
    result = download_dataset(
        name,
        data_dir,
        mirror,
        per_class,
        force,
        show_progress(progress),
        max_extract_bytes=int(max_extract_gb * 10**9),
        max_extract_ratio=max_extract_ratio,
    )
    if result.existed:
        print(f"{result.path} already exists (pass --force to download it again)", file=sys.stderr)
        return
    if result.failures:
        print(f"{result.failures} image(s) failed; see {FAILURE_REPORT} in the dataset folder", file=sys.stderr)
    for url, digest in result.trusted.items():
        print(
            f"{url}: no published checksum; trusted on first use: sha256 {digest}"
            f" (recorded in {result.path.parent / '.downloads' / TRUST_FILE}, required from now on)"
        )
    summary = ", ".join(f"{label} {count}" for label, count in sorted(result.counts.items()))
    print(f"{result.path}: {sum(result.counts.values())} images ({summary})")
