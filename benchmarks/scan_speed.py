"""Speed of the pre-training scan on many small images: cold (every file decoded and hashed) and cached.

Before training, ``fit`` finds the layout and labels every file (discovery), then decodes and hashes each one and
looks for duplicates across splits (``preflight``); results are cached per file, so a second run decodes
nothing. This generates ``--images`` small JPEGs (32-64 px, ``--classes`` classes) in a temporary folder, with an
empty cache folder, and times each stage in this process.

    python benchmarks/scan_speed.py [--images 20000] [--classes 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_table, record_results
from PIL import Image


def make_small_images(root: Path, count: int, classes: int) -> Path:
    """Distinct noisy JPEGs of 32 to 64 px (a thumbnail or icon dataset), spread evenly over the classes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        side = int(rng.integers(32, 65))
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=85)
    return root


def timed(function, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tlbench-scan-") as scratch:
        os.environ["TLBENCH_CACHE_DIR"] = str(Path(scratch) / "cache")  # before tlbench reads it: a cold cache
        from tlbench.data.audit import AuditedFile, find_duplicates, preflight, scan_files
        from tlbench.data.split import split_dataset

        root, made = timed(make_small_images, Path(scratch) / "small", args.images, args.classes)
        print(f"generated {args.images} images in {made:.1f} s")
        split, discovery = timed(split_dataset, root)
        table = split.table
        paths = list(table.path)
        _, cold = timed(scan_files, root, paths)
        scans, cached = timed(scan_files, root, paths)
        files = [AuditedFile(p, label, s) for p, label, s in table[["path", "label", "split"]].itertuples(index=False)]
        _, duplicates = timed(find_duplicates, files, scans)
        _, preflight_cached = timed(preflight, root, table)
        n = len(paths)
        rows = [
            ("discovery (layout, labels, split)", f"{discovery:.2f} s", f"{n / discovery:,.0f} images/s"),
            ("scan, cold (decode + sha256 + pHash)", f"{cold:.1f} s", f"{n / cold:,.0f} images/s"),
            ("scan, cached", f"{cached:.2f} s", f"{n / cached:,.0f} images/s"),
            ("duplicate search (exact + near)", f"{duplicates:.2f} s", f"{n / duplicates:,.0f} images/s"),
            ("whole preflight, cached", f"{preflight_cached:.2f} s", f"{n / preflight_cached:,.0f} images/s"),
        ]
        print_table(f"pre-training scan of {n} small images ({args.classes} classes)", rows, ("stage", "time", "rate"))


if __name__ == "__main__":
    record_results(main)
