"""int8 against fp32 ONNX Runtime on a real run: images per second at batch 32 and batch 1, and file size.

    python benchmarks/export_int8.py RUN_DIR [--threads 2] [--seconds 5] [--rounds 3]

Exports RUN_DIR with ``--quantize int8`` into a temporary folder (the int8 check runs as in ``tlbench export``),
then times both graphs on the run's preprocessed test images (repeated to fill a batch of 32), the two
alternating round by round so both see the same machine load; each figure is the best round. Preprocessing is
not timed: the graphs alone. On a CPU shared with other work absolute figures are noisy; the ratios are the
result.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_table

from tlbench.export import export_bundle, network_input, split_crops
from tlbench.models.engine import INPUT, ort_session
from tlbench.models.loading import BUNDLE_ONNX, load_trained
from tlbench.quantize import INT8_ONNX
from tlbench.rundir import read_metrics


def images_per_second(session, batch: np.ndarray, seconds: float) -> float:
    session.run(None, {INPUT: batch})  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {INPUT: batch})
        done += len(batch)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per graph, batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    trained = load_trained(args.run)
    crops, _ = split_crops(args.run, trained.preprocessing, read_metrics(args.run).get("test_on", "test"))
    images = network_input(crops, trained.preprocessing).numpy()
    batches = {32: np.resize(images, (32, *images.shape[1:])), 1: images[:1]}
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        bundle, parity = export_bundle(args.run, quantize="int8", output=Path(scratch) / "bundle")
        export_seconds = time.perf_counter() - start
        sessions = {
            name: ort_session(bundle / file, args.threads)
            for name, file in (("fp32", BUNDLE_ONNX), ("int8", INT8_ONNX))
        }
        best = {(name, size): 0.0 for name in sessions for size in batches}
        for _ in range(args.rounds):
            for size, batch in batches.items():
                for name, session in sessions.items():
                    best[name, size] = max(best[name, size], images_per_second(session, batch, args.seconds))
    check, sizes = parity["int8"], parity["int8"]["size_bytes"]
    rows = [
        (f"img/s batch {size}, {name}", f"{best[name, size]:.1f}", f"{best[name, size] / best['fp32', size]:.2f}x")
        for size in batches
        for name in sessions
    ]
    rows += [
        (f"file size {name}", f"{sizes[name] / 1e6:.1f} MB", f"{sizes[name] / sizes['fp32']:.0%}") for name in sizes
    ]
    rows += [
        ("test agreement", f"{check['agreement']:.1%} of {check['n']}", f"McNemar p={check['mcnemar_p']:.2g}"),
        ("test accuracy fp32 / int8", f"{check['fp32_acc']:.3f} / {check['int8_acc']:.3f}", ""),
        ("export + quantise + check", f"{export_seconds:.0f} s", f"{check['calibration_images']} calibration images"),
    ]
    print_table(f"{trained.backbone} {trained.phase}, {args.threads} ONNX Runtime threads", rows)


if __name__ == "__main__":
    main()
