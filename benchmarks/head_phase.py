"""Head phase with the feature cache vs one plain forward pass of the backbone (and vs no cache).

The issue's target: a 20-epoch head phase costs at most 1.5x one forward pass of the frozen backbone over the
same train+val images, measured in the same run with the same batch size and threads. All three are measured
from cold caches (decoded images and features), so the cached run pays for its one backbone pass.

    python benchmarks/head_phase.py [--data ../shared/data/birds10] [--epochs 20] [--batch_size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import SHARED_DATA, print_table, run_fit
from torch.utils.data import DataLoader

from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.models.backbones import create_backbone


def plain_forward_seconds(data: Path, backbone: str, batch_size: int, num_workers: int) -> tuple[float, int]:
    """One inference pass over train+val images, decoding each file, as a hand-written loop would."""
    built = create_backbone(backbone)
    datamodule = ImageFolderDataModule(
        str(data), batch_size=batch_size, num_workers=num_workers, decode_cache=False, dedupe=True
    )
    datamodule.preprocessing = built.preprocessing
    datasets = [datamodule.dataset("train"), datamodule.dataset("val")]
    model = built.extractor.eval().to(memory_format=torch.channels_last)  # the fastest plain pass on this CPU
    start = time.perf_counter()
    with torch.inference_mode():
        for dataset in datasets:
            for images, _, _ in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
                model(built.preprocessing.normalize(images).contiguous(memory_format=torch.channels_last))
    return time.perf_counter() - start, sum(len(d) for d in datasets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "birds10")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--skip_uncached", action="store_true", help="do not measure the (slow) run without the cache")
    args = parser.parse_args()
    common = [
        "--data.root",
        str(args.data),
        "--data.dedupe",
        "true",
        "--model.backbone",
        args.backbone,
        "--model.head_epochs",
        str(args.epochs),
        "--model.finetune_epochs",
        "0",
        "--data.batch_size",
        str(args.batch_size),
        "--data.num_workers",
        str(args.num_workers),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        forward, n_images = plain_forward_seconds(args.data, args.backbone, args.batch_size, args.num_workers)
        cached = run_fit(scratch / "cached", "cached", *common, cache_dir=scratch / "cold_cache")
        rows = [
            (f"one forward pass, {n_images} train+val images", f"{forward:.1f} s", "1.00x"),
            (
                f"{args.epochs}-epoch head phase, feature cache (cold)",
                f"{cached['phases']['head']['train_seconds']:.1f} s",
                f"{cached['phases']['head']['train_seconds'] / forward:.2f}x",
            ),
        ]
        if not args.skip_uncached:
            plain = run_fit(
                scratch / "plain",
                "plain",
                *common,
                "--model.cache_features",
                "false",
                "--data.decode_cache",
                "false",
                cache_dir=scratch / "cold_cache2",
            )
            rows.append(
                (
                    f"{args.epochs}-epoch head phase, no caches",
                    f"{plain['phases']['head']['train_seconds']:.1f} s",
                    f"{plain['phases']['head']['train_seconds'] / forward:.2f}x",
                )
            )
            rows.append(
                (
                    "test accuracy cached / uncached",
                    f"{cached['phases']['head']['test_acc']:.3f} / {plain['phases']['head']['test_acc']:.3f}",
                    "",
                )
            )
    print_table(
        f"Head phase vs one forward pass ({args.backbone}, {args.data.name}, batch {args.batch_size},"
        f" {torch.get_num_threads()} threads)",
        rows,
    )


if __name__ == "__main__":
    main()
