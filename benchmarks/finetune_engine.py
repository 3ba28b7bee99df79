"""Fine-tune epochs with the frozen layers in torch vs in ONNX Runtime, and whether test accuracy moves.

For each seed, two whole ``fit`` runs as a user runs them, identical but for ``--model.engine torch`` (tlbench
before issue 13) or ``onnxruntime``, alternating so both see the same machine load. Epoch time is the median
fine-tune epoch after the first (decode cache warm; the first also caches the frozen layers' validation
activations), validation included, from ``history.csv``. Accuracy: the fine-tuned model on the test split,
paired image by image over all seeds (pooled exact McNemar test), since the two engines' frozen activations
differ in float rounding and training may drift apart from there.

    python benchmarks/finetune_engine.py [--data ../shared/data/butterflies10] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import SHARED_DATA, print_table, record_results, run_fit

from tlbench.evaluation.stats import mcnemar_test, wilson_interval

ENGINES = ("torch", "onnxruntime")


def epoch_seconds(history: pd.DataFrame) -> float:
    finetune = history[history.phase == "finetune"]
    return statistics.median(finetune.seconds.iloc[1:] if len(finetune) > 1 else finetune.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "butterflies10")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--unfreeze_blocks", type=int, default=2)
    parser.add_argument("--head_epochs", type=int, default=5)
    parser.add_argument("--finetune_epochs", type=int, default=4)
    args = parser.parse_args()
    seconds = {engine: [] for engine in ENGINES}
    correct = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in [int(seed) for seed in args.seeds.split(",")]:
            for engine in ENGINES:
                metrics = run_fit(
                    Path(scratch) / engine,
                    f"seed{seed}",
                    *("--data.root", str(args.data), "--data.dedupe", "true", "--data.split_seed", str(seed)),
                    *("--seed_everything", str(seed), "--model.backbone", args.backbone, "--model.engine", engine),
                    *("--model.unfreeze_blocks", str(args.unfreeze_blocks), "--model.layer_decay", "null"),
                    *("--model.head_epochs", str(args.head_epochs), "--model.head_patience", "null"),
                    *("--model.finetune_epochs", str(args.finetune_epochs), "--model.finetune_patience", "null"),
                    cache_dir=Path(scratch) / "cache",  # shared: the decode cache is warm after the first fit
                )
                seconds[engine].append(epoch_seconds(metrics["history"]))
                run = Path(metrics["run_dir"])
                predictions = pd.read_csv(run / metrics["phases"]["finetune"]["predictions"]).sort_values("path")
                correct[engine].append(predictions.correct.to_numpy(bool))
    pooled = {engine: np.concatenate(values) for engine, values in correct.items()}
    test = mcnemar_test(pooled["torch"], pooled["onnxruntime"])
    rows = []
    for engine in ENGINES:
        low, high = wilson_interval(int(pooled[engine].sum()), len(pooled[engine]))
        rows.append(
            (
                f"{engine}: fine-tune epoch (median over seeds, {', '.join(f'{s:.1f}' for s in seconds[engine])})",
                f"{statistics.median(seconds[engine]):.1f} s",
                f"{statistics.median(seconds['torch']) / statistics.median(seconds[engine]):.2f}x faster",
            )
        )
        rows.append(
            (f"{engine}: test accuracy, all seeds pooled", f"{pooled[engine].mean():.3f}", f"[{low:.3f}, {high:.3f}]")
        )
    rows.append(("paired McNemar, torch vs onnxruntime", f"p = {test.p_value:.2f}", f"{test.b} vs {test.c} discordant"))
    print_table(
        f"Fine-tune epoch by engine ({args.backbone}, {args.data.name}, top {args.unfreeze_blocks} blocks,"
        f" seeds {args.seeds}, {torch.get_num_threads()} threads)",
        rows,
    )


if __name__ == "__main__":
    record_results(main)
