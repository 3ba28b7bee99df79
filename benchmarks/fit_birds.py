"""A whole ``fit`` of a recipe (default: the default one) on the study's birds: wall time and peak memory, cold and
warm caches.

Cold: empty decoded-image and feature caches (a first run). Warm: the same command again (a second model on
the same data, or a re-run), which reuses both.

    python benchmarks/fit_birds.py [--data ../shared/data/birds10] [--config birds_efficientnet_lite0.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SHARED_DATA, print_table, record_results, run_fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "birds10")
    parser.add_argument("--config", default="birds_efficientnet_lite2.yaml", help="a shipped or local fit config")
    args = parser.parse_args()
    fit_args = ["--config", args.config, "--data.root", str(args.data), "--data.dedupe", "true"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for label in ("cold caches", "warm caches"):
            metrics = run_fit(scratch / "runs", "birds", *fit_args, cache_dir=scratch / "cache")
            phases = metrics["phases"]
            rows.append(
                (
                    f"fit, {label}",
                    f"{metrics['wall_seconds']:.0f} s wall, peak RSS {metrics['peak_rss_mib']:.0f} MiB",
                    f"head {phases['head']['epochs']} ep {phases['head']['train_seconds']:.0f} s,"
                    f" finetune {phases['finetune']['epochs']} ep {phases['finetune']['train_seconds']:.0f} s",
                )
            )
            rows.append(
                (
                    f"  test accuracy ({label})",
                    f"head {phases['head']['test_acc']:.2f} [{phases['head']['test_acc_ci95'][0]:.2f},"
                    f" {phases['head']['test_acc_ci95'][1]:.2f}]",
                    f"finetune {phases['finetune']['test_acc']:.2f} [{phases['finetune']['test_acc_ci95'][0]:.2f},"
                    f" {phases['finetune']['test_acc_ci95'][1]:.2f}]",
                )
            )
    print_table(
        f"{args.config} on {args.data.name} (epochs run per phase)",
        rows,
        ("run", "time / memory", "phases"),
    )


if __name__ == "__main__":
    record_results(main)
