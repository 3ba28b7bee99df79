"""Fine-tune throughput: tlbench's fine-tune phase vs a bare loop on pre-made tensors.

The bare loop is the model's own speed: the module's forward (the frozen layers through the default engine, ONNX
Runtime on a CPU, the trainable top in torch) with the same top blocks trainable, the same head,
batch size, optimizer and threads, forward + backward + step on random tensors already in memory, as many full
batches as one epoch holds. It runs three times, before, between and after the tlbench runs, and the median is
the reference (this machine's speed drifts by about 10% between minutes). tlbench's figures come from
``history.csv`` of a real ``fit`` on photos (decode cache warm, the median of the epochs after the first):
training images per second over the epoch's training part, and over the whole epoch including full validation
(``val_seconds``); the same fit with ``--model.cache_features false`` (validation through the whole network)
runs beside it.
Lightning's simple profiler shows where the rest of the epoch goes.

    python benchmarks/finetune_throughput.py [--data ../shared/data/butterflies10] [--batch_size 32]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO, SHARED_DATA, print_table, record_results, run_fit

from tlbench.models.module import TransferLearningModule, build_optimizer


def bare_loop_images_per_second(
    backbone: str, classes: int, batch_size: int, unfreeze: int, steps: int, channels_last: bool
) -> float:
    model = TransferLearningModule(
        backbone=backbone,
        unfreeze_blocks=unfreeze,
        head_epochs=0,
        finetune_epochs=1,
        channels_last=channels_last,
        classes=[str(i) for i in range(classes)],
    )
    model.train()
    optimizer = build_optimizer("adamw", [p for p in model.parameters() if p.requires_grad], 1e-4, 0.9, 1e-4)
    size = model.preprocessing.input_size
    images = torch.randn(batch_size, 3, size, size)
    targets = torch.randint(0, classes, (batch_size,))

    def step() -> None:
        loss = model.loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "butterflies10")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--unfreeze_blocks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    classes = sum(1 for p in args.data.iterdir() if p.is_dir())
    steps = max(1, int(0.7 * sum(1 for p in args.data.rglob("*") if p.is_file())) // args.batch_size)

    def bare(channels_last: bool = True) -> float:
        return bare_loop_images_per_second(
            args.backbone, classes, args.batch_size, args.unfreeze_blocks, steps, channels_last
        )

    bare_runs, bare_nchw = [bare()], bare(channels_last=False)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        fit_args = [
            "--data.root",
            str(args.data),
            "--data.dedupe",
            "true",
            "--model.backbone",
            args.backbone,
            "--model.head_epochs",
            "0",
            "--model.finetune_epochs",
            str(args.epochs),
            "--model.unfreeze_blocks",
            str(args.unfreeze_blocks),
            "--data.batch_size",
            str(args.batch_size),
        ]
        cached = run_fit(scratch / "fit", "throughput", *fit_args, cache_dir=scratch / "cache")
        bare_runs.append(bare())
        uncached = run_fit(
            scratch / "fit", "uncached", *fit_args, "--model.cache_features", "false", cache_dir=scratch / "cache"
        )
        profile = subprocess.run(
            [
                sys.executable,
                "-m",
                "tlbench",
                "fit",
                *fit_args,
                "--model.finetune_epochs",
                "1",
                "--trainer.profiler",
                "simple",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.default_root_dir",
                str(scratch / "profile"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "TLBENCH_CACHE_DIR": str(scratch / "cache")},
        )
    bare_runs.append(bare())
    reference = sorted(bare_runs)[1]
    n_train = cached["split_sizes"]["train"]
    warm, plain = (history.iloc[1:].median(numeric_only=True) for history in (cached["history"], uncached["history"]))
    first = cached["history"].iloc[0]
    rates = {
        "tlbench training part of a fine-tune epoch": n_train / (warm.seconds - warm.val_seconds),
        f"tlbench whole fine-tune epoch incl. validation ({warm.val_seconds:.1f} s)": n_train / warm.seconds,
        f"same, validation through the whole network ({plain.val_seconds:.1f} s)": n_train / plain.seconds,
        "tlbench first epoch (cold decode, caching frozen layers)": n_train / first.seconds,
    }
    print_table(
        f"Fine-tune throughput ({args.backbone}, top {args.unfreeze_blocks} blocks, batch {args.batch_size},"
        f" {torch.get_num_threads()} threads,"
        f" {n_train} train / {cached['split_sizes']['val']} val images)",
        [
            (
                f"bare loop, pre-made tensors, channels_last (median of {', '.join(f'{r:.1f}' for r in bare_runs)})",
                f"{reference:.1f} img/s",
                "1.00x",
            ),
            ("bare loop, pre-made tensors, NCHW", f"{bare_nchw:.1f} img/s", f"{bare_nchw / reference:.2f}x"),
            *((name, f"{rate:.1f} img/s", f"{rate / reference:.2f}x") for name, rate in rates.items()),
        ],
    )
    lines = [
        line
        for line in (profile.stdout + profile.stderr).splitlines()
        if line.startswith("|")
        and re.search(
            r"run_training_epoch|run_training_batch|train_dataloader_next|optimizer_step|backward|training_step|on_train_batch_end|validation_step|save_checkpoint|Total",
            line,
        )
    ]
    print("\nWhere the fine-tune epoch's time goes (Lightning simple profiler, one epoch):")
    print("\n".join(lines[:16]))


if __name__ == "__main__":
    record_results(main)
