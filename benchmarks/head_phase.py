"""Head phase with the feature cache vs one plain forward pass of the backbone (and vs no cache).

The target (issues 3 and 13): a 20-epoch head phase costs at most 1.5x one ONNX Runtime forward pass of the frozen
backbone over the same train+val images, decoding included on both sides, measured in the same run with the same
batch size and threads. The fits start from cold caches (decoded images and features), so the cached run pays for
its one backbone pass; the exported graph is warm (it is exported once per backbone and machine: its own row).

    python benchmarks/head_phase.py [--data ../shared/data/birds10] [--epochs 20] [--batch_size 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import SHARED_DATA, print_table, record_results, run_fit
from torch.utils.data import DataLoader

from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.models.backbones import evaluating
from tlbench.models.feature_cache import compute_features
from tlbench.models.module import TransferLearningModule


def forward_pass_seconds(data: Path, backbone: str, engine: str, batch: int, workers: int) -> tuple[float, float, int]:
    """One inference pass of the frozen backbone over train+val, decoding every file, through tlbench's own feature
    path on ``engine``, and the seconds of the first batch before it (exports the graph into the current cache and
    checks it against torch)."""
    module = TransferLearningModule(backbone=backbone, engine=engine, classes=["a", "b"]).eval()
    datamodule = ImageFolderDataModule(
        str(data), batch_size=batch, num_workers=workers, decode_cache=False, dedupe=True
    )
    datamodule.preprocessing = module.preprocessing
    datasets = [datamodule.dataset("train"), datamodule.dataset("val")]
    first = next(iter(DataLoader(datasets[0], batch_size=batch)))[0]
    with evaluating(module.backbone):
        start = time.perf_counter()
        module.encode(first)
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        for dataset in datasets:
            compute_features(module.encode, dataset, 1, batch, workers, 0, module.device, progress=False)
    return time.perf_counter() - start, warmup, sum(len(d) for d in datasets)


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
        os.environ["TLBENCH_CACHE_DIR"] = str(scratch / "graphs")
        pass_args = (args.data, args.backbone)
        forward, export, n_images = forward_pass_seconds(*pass_args, "onnxruntime", args.batch_size, args.num_workers)
        torch_forward, _, _ = forward_pass_seconds(*pass_args, "torch", args.batch_size, args.num_workers)
        # Cold feature and decode caches; the exported graph is kept, as on any run after a backbone's first.
        shutil.copytree(scratch / "graphs" / "onnx", scratch / "cold_cache" / "onnx")
        cached = run_fit(scratch / "cached", "cached", *common, cache_dir=scratch / "cold_cache")
        rows = [
            (f"one ONNX Runtime forward pass, {n_images} train+val images", f"{forward:.1f} s", "1.00x"),
            ("one torch (channels-last) pass", f"{torch_forward:.1f} s", f"{torch_forward / forward:.2f}x"),
            ("first batch: ONNX export + parity check (once per backbone)", f"{export:.1f} s", ""),
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
    record_results(main)
