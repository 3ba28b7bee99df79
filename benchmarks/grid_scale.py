"""A grid run serially, with ``grid --jobs N`` and on a Ray cluster: wall time side by side, and the same result
for every cell.

Eight small cells (two generated datasets x cnn1 x four seeds, from scratch) run three times, each time as
``python -m tlbench grid`` in a fresh process with a fresh output folder and an empty cache: first serially, as a
user starts it (each cell sizes torch's threads and decode workers to the whole machine), then with ``--jobs N``
(each cell gets cores/N threads and at most cores/N - 1 decode workers), then with ``--launcher ray`` on a local
cluster of N nodes of cores/N CPUs each (``ray start --head`` plus N - 1 ``ray start --address``, started before
the clock runs), each cell a Ray task of cores/N CPUs. The CPU time of each run (the grid and its cells, from
``getrusage``; a Ray cell's as its task recorded it, Ray's own processes not counted) says whether a run won by
using idle cores or lost work to contention. Per cell, what it learned must match: validation and test accuracy
identical, validation loss and test calibration error equal up to float rounding (a cell's torch threads set the
order of its sums: 2 serially, 1 in a pool of 2 or a Ray task of 1 CPU on 2 cores).

    python benchmarks/grid_scale.py [--jobs 2] [--seeds 4] [--per-class 40] [--size 64] [--epochs 2] [--workers 0]

Decode workers are pinned (``--workers 0``) by default: augmentations drawn in a worker process follow that worker's
random stream, so a cell's results depend on how many it has, and the pool gives each cell fewer than a lone fit
(``--workers -1`` shows it: the fine-tune phase then differs in the fourth digit of its loss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, print_table, record_results
from PIL import Image

from tlbench.grid_ray import CPU_SECONDS, RAY_DIR, local_cluster
from tlbench.rundir import finished_metrics

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]
ACCURACIES, ROUNDED = ("val_acc", "test_acc"), ("val_loss", "test_ece")


def make_dataset(root: Path, classes: int, per_class: int, size: int) -> Path:
    """Noisy colour patches, one colour per class: learnable by cnn1 in a few epochs."""
    rng = np.random.default_rng(classes)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.array(COLOURS[c])[None, None, :] + rng.normal(0, 40, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"class_{c}" / f"{i:03d}.png")
    return root


def environment(workdir: Path) -> dict[str, str]:
    """This checkout, an empty cache of the run's own, and the whole machine as the grid's thread budget."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TLBENCH_CACHE_DIR": str(workdir / "cache")}
    env.pop("OMP_NUM_THREADS", None)
    return env


def run(workdir: Path, data: Path, seeds: int, grid_args: list[str], fit_args: list[str]) -> tuple[float, float, dict]:
    """``grid GRID_ARGS`` over ``data``'s datasets x cnn1 x ``seeds`` seeds: wall seconds, CPU seconds of this
    process's children, cell -> learned."""
    command = [sys.executable, "-m", "tlbench", "grid", "--datasets", "three,two", "--data_dir", str(data)]
    command += ["--backbones", "cnn1", "--seeds", ",".join(map(str, range(seeds))), "--output", str(workdir)]
    command += [*grid_args, "--", *fit_args]
    env = environment(workdir)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"grid failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Ray's cells are children of its workers, not of this process: each task's last line says what its cell cost.
    for out in workdir.glob(f"lightning_logs/grids/*/{RAY_DIR}/*.out"):
        cpu += sum(
            float(line.split(", ")[-1].split()[0]) for line in out.read_text().splitlines() if CPU_SECONDS in line
        )
    learned = {}
    for experiment in sorted(path.name for path in (workdir / "lightning_logs").glob("*_cnn1_seed*")):
        phases = json.loads(finished_metrics(workdir, experiment).read_text())["phases"]
        learned[experiment] = {
            phase: {key: values[key] for key in (*ACCURACIES, *ROUNDED)} for phase, values in phases.items()
        }
    return wall, cpu, learned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=0, help="decode workers of every cell; -1: the grid's default (docs/grids.md)"
    )
    args = parser.parse_args()
    fit_args = [
        *("--model.pretrained", "false", "--model.input_size", str(args.size), "--model.head_hidden", "32"),
        *("--model.head_epochs", str(args.epochs), "--model.finetune_epochs", str(args.epochs)),
        *("--model.unfreeze_blocks", "-1", "--data.batch_size", "16", "--trainer.accelerator", "cpu"),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        *(("--data.num_workers", str(args.workers)) if args.workers >= 0 else ()),
    ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_node = max(1, cores // args.jobs)
    with tempfile.TemporaryDirectory(prefix="grid-scale-") as folder:
        data = Path(folder) / "data"
        make_dataset(data / "three", 3, args.per_class, args.size)
        make_dataset(data / "two", 2, args.per_class, args.size)
        serial = run(Path(folder) / "serial", data, args.seeds, [], fit_args)
        pooled = run(Path(folder) / "pooled", data, args.seeds, ["--jobs", str(args.jobs)], fit_args)
        ray_dir = Path(tempfile.mkdtemp(prefix="gs", dir="/tmp"))  # short: Ray's unix sockets live under it
        started = time.perf_counter()
        try:
            with local_cluster(ray_dir, args.jobs, per_node, environment(Path(folder) / "ray")) as address:
                startup = time.perf_counter() - started
                ray_args = ["--launcher", "ray", "--address", address, "--cpus_per_cell", str(per_node)]
                on_ray = run(Path(folder) / "ray", data, args.seeds, ray_args, fit_args)
        finally:
            shutil.rmtree(ray_dir, ignore_errors=True)
    cells = len(serial[2])
    rows = [
        ("serial: wall seconds", f"{serial[0]:.1f}", "1.00"),
        (f"--jobs {args.jobs}: wall seconds", f"{pooled[0]:.1f}", f"{pooled[0] / serial[0]:.2f}"),
        (
            f"ray, {args.jobs} nodes of {per_node} CPUs: wall seconds",
            f"{on_ray[0]:.1f}",
            f"{on_ray[0] / serial[0]:.2f}",
        ),
        ("ray: starting the cluster (not in its wall time)", f"{startup:.1f}", ""),
        ("serial: CPU seconds (grid + cells)", f"{serial[1]:.1f}", "1.00"),
        (f"--jobs {args.jobs}: CPU seconds (grid + cells)", f"{pooled[1]:.1f}", f"{pooled[1] / serial[1]:.2f}"),
        ("ray: CPU seconds (driver + cells, not Ray itself)", f"{on_ray[1]:.1f}", f"{on_ray[1] / serial[1]:.2f}"),
    ]
    for label, other in ((f"--jobs {args.jobs}", pooled[2]), ("ray", on_ray[2])):
        same_accuracy = sum(
            all(serial[2][cell][phase][key] == other[cell][phase][key] for phase in phases for key in ACCURACIES)
            for cell, phases in serial[2].items()
        )
        drift = max(
            abs(other[cell][phase][key] / serial[2][cell][phase][key] - 1)
            for cell, phases in serial[2].items()
            for phase in phases
            for key in ROUNDED
        )
        rows.append((f"{label}: cells with accuracies identical to serial", f"{same_accuracy}/{cells}", ""))
        rows.append((f"{label}: largest relative difference, losses and ECE", f"{drift:.1e}", ""))
    rows.append(
        (
            "ray vs --jobs: cells with identical results",
            f"{sum(pooled[2][c] == on_ray[2][c] for c in pooled[2])}/{cells}",
            "",
        )
    )
    print_table(
        f"{cells} cells (2 datasets x cnn1 x {args.seeds} seeds, {args.per_class} images per class at {args.size} px,"
        f" {args.epochs}+{args.epochs} epochs, {args.workers if args.workers >= 0 else 'default'} decode workers)"
        f" on {cores} cores",
        rows,
    )


if __name__ == "__main__":
    record_results(main)
