"""Does ``torch.compile`` pay off for a fine-tune phase here? Eager vs compiled training steps, compile time included.

A fine-tune phase of a few hundred images is a few dozen steps; compilation pays off only if the per-step
saving times the steps exceeds the one-off compile time (paid again whenever what trains changes).

    python benchmarks/compile_check.py [--backbone efficientnet_lite0] [--steps 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import print_table, record_results

from tlbench.models.module import TransferLearningModule, build_optimizer


def timed_steps(model: torch.nn.Module, forward, steps: int, batch: int) -> tuple[float, float]:
    """(seconds of the first step, seconds per later step) of forward + backward + AdamW step."""
    optimizer = build_optimizer("adamw", [p for p in model.parameters() if p.requires_grad], 1e-4, 0.9, 1e-4)
    images, targets = torch.randn(batch, 3, 224, 224), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(forward(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    model = TransferLearningModule(
        backbone=args.backbone, head_epochs=0, finetune_epochs=1, classes=[str(i) for i in range(10)]
    ).train()
    eager_first, eager = timed_steps(model, model, args.steps, args.batch_size)
    compiled_first, compiled = timed_steps(model, torch.compile(model), args.steps, args.batch_size)
    break_even = (compiled_first - compiled) / max(1e-9, eager - compiled) if eager > compiled else float("inf")
    print_table(
        f"torch.compile on a fine-tune step ({args.backbone}, batch {args.batch_size},"
        f" {torch.get_num_threads()} threads)",
        [
            ("eager step", f"{eager:.2f} s", "1.00x"),
            ("compiled step (after compiling)", f"{compiled:.2f} s", f"{eager / compiled:.2f}x"),
            (
                "first compiled step (compile time)",
                f"{compiled_first:.1f} s",
                f"break-even after {break_even:.0f} steps",
            ),
        ],
    )


if __name__ == "__main__":
    record_results(main)
