"""Fine-tune epoch time with and without the decoded-image cache, on real photos and on phone-sized JPEGs.

Both runs start from an empty cache folder; the figure compared is the second fine-tune epoch (the first one
fills the cache). The phone-sized set is generated: 60 smooth 4000x3000 JPEGs in 3 classes, as a user's
camera folder would be.

    python benchmarks/decode_cache.py [--data ../shared/data/leaves3] [--big_images 60]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import SHARED_DATA, print_table, record_results, run_fit
from PIL import Image


def make_phone_photos(root: Path, count: int, size: tuple[int, int] = (4000, 3000)) -> Path:
    """Smooth random colour fields (distinct pictures, camera-like JPEG sizes), one class per colour bias."""
    rng = np.random.default_rng(0)
    for i in range(count):
        label = i % 3
        field = rng.random((12, 16, 3)) * 0.7
        field[..., label] += 0.3
        small = Image.fromarray((field * 255).astype(np.uint8))
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        small.resize(size, Image.Resampling.BICUBIC).save(folder / f"photo_{i:03d}.jpg", quality=90)
    return root


def epoch_seconds(data: Path, scratch: Path, decode_cache: bool, name: str) -> float:
    args = [
        "--data.root",
        str(data),
        "--model.head_epochs",
        "0",
        "--model.finetune_epochs",
        "2",
        "--data.batch_size",
        "16",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--data.decode_cache",
        str(decode_cache).lower(),
        "--data.dedupe",
        "true",
    ]
    metrics = run_fit(scratch / name, name, *args, cache_dir=scratch / f"cache_{name}")
    return float(metrics["history"].seconds.iloc[-1]), metrics["split_sizes"]["train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "leaves3")
    parser.add_argument("--big_images", type=int, default=60)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        datasets = [(args.data.name, args.data)]
        if args.big_images:
            datasets.append(
                (f"{args.big_images} generated 4000x3000 JPEGs", make_phone_photos(scratch / "phone", args.big_images))
            )
        for label, data in datasets:
            off, n = epoch_seconds(data, scratch, False, f"{data.name}_off")
            on, _ = epoch_seconds(data, scratch, True, f"{data.name}_on")
            rows.append((f"{label}: fine-tune epoch, decode every epoch", f"{off:.1f} s ({n} images)", "1.00x"))
            rows.append((f"{label}: fine-tune epoch, decoded cache", f"{on:.1f} s", f"{off / on:.2f}x faster"))
    print_table("Decode once (efficientnet_lite0, top 2 blocks, batch 16, second fine-tune epoch)", rows)


if __name__ == "__main__":
    record_results(main)
