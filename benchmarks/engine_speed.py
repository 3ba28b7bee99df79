"""The inference engine side by side: torch (channels-last, inference mode: tlbench before issue 13) vs ONNX Runtime,
in one process, alternating, so both see the same machine load.

* feature extraction: head-phase features (pooled backbone output) of real photos through ``compute_features``,
  JPEG decoding included (no decode cache), images per second;
* fine-tune training steps: the top ``--unfreeze_blocks`` blocks trained (forward, backward, optimizer step) on
  augmented real batches, the frozen layers below them in torch or in ONNX Runtime; seconds per batch;
* classify: ``classify_paths`` on real photos (decoding included), images per second.

Graphs are exported (and cached) before timing; each measurement is the best of ``--rounds`` alternated rounds.
On a CPU shared with other work absolute figures are noisy; the ratios are the result.

    python benchmarks/engine_speed.py [--data ../shared/data/butterflies10] [--images 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import SHARED_DATA, print_table, record_results
from torch.utils.data import DataLoader, Subset

from tlbench.classify import classify_paths
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.models.backbones import evaluating
from tlbench.models.feature_cache import compute_features
from tlbench.models.inference import Predictor
from tlbench.models.loading import TrainedModel
from tlbench.models.module import TransferLearningModule, build_optimizer

ENGINES = ("torch", "onnxruntime")


def feature_rate(module: TransferLearningModule, dataset, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    with evaluating(module.backbone):
        compute_features(module.encode, dataset, 1, batch_size, workers, 0, module.device, progress=False)
    return len(dataset) / (time.perf_counter() - start)


def finetune_seconds_per_batch(module: TransferLearningModule, batches: list) -> float:
    """Forward, backward and step over ``batches`` (already decoded: the step's own cost, the part the trunk
    engine changes)."""
    module.train()
    optimizer = build_optimizer("adamw", [p for p in module.parameters() if p.requires_grad], 1e-4, 0.9, 1e-4)
    start = time.perf_counter()
    for images, targets, _ in batches:
        loss = torch.nn.functional.cross_entropy(module(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(batches)


def classify_rate(trained: TrainedModel, paths: list[Path], engine: str, batch_size: int) -> float:
    """Images per second of ``classify_paths``, after one untimed batch (the graph's export or cache load)."""
    predictor = Predictor(trained, batch_size, engine)
    classify_paths(predictor, paths[:batch_size], top_k=3)
    start = time.perf_counter()
    classify_paths(predictor, paths, top_k=3)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "butterflies10")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="photos per feature-extraction and classify pass")
    parser.add_argument("--finetune_batches", type=int, default=6)
    parser.add_argument("--unfreeze_blocks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    data = ImageFolderDataModule(str(args.data), batch_size=args.batch_size, decode_cache=False, dedupe=True)
    table = data.prepare_split()
    classes = sorted(table.label.unique())

    def build(engine: str) -> TransferLearningModule:
        return TransferLearningModule(
            backbone=args.backbone, head_epochs=1, unfreeze_blocks=args.unfreeze_blocks, engine=engine, classes=classes
        )

    modules = {engine: build(engine) for engine in ENGINES}
    modules["onnxruntime"].load_state_dict(modules["torch"].state_dict())
    classifier = build("torch").eval()  # as load_trained gives it: torch inside, the Predictor picks the engine
    classifier.load_state_dict(modules["torch"].state_dict())
    trained = TrainedModel(classifier, classes, classifier.preprocessing, args.backbone, "head", Path("-"))
    data.preprocessing = classifier.preprocessing
    eval_set = data.dataset("train")
    subset = Subset(eval_set, range(min(args.images, len(eval_set))))
    train_loader = DataLoader(data.dataset("train", train_transforms=True), batch_size=args.batch_size, shuffle=True)
    batches = [batch for batch, _ in zip(train_loader, range(args.finetune_batches))]
    paths = [Path(args.data) / path for path in table.path[: args.images]]
    print(
        f"{args.backbone}, batch {args.batch_size}, torch threads {torch.get_num_threads()},"
        f" {len(subset)} photos of {args.data.name}, {len(batches)} fine-tune batches; rounds alternate the engines"
    )
    warm = Subset(eval_set, range(args.batch_size))
    results = {name: {engine: [] for engine in ENGINES} for name in ("features", "finetune", "classify")}
    # Feature extraction first: fine-tune steps change the top blocks, so the whole backbone's graph would be
    # exported again. Each kind starts with an untimed warm-up pass per engine (exports the cached graphs).
    for engine, module in modules.items():
        feature_rate(module, warm, args.batch_size, data.num_workers)
    for _ in range(args.rounds):
        for engine, module in modules.items():
            results["features"][engine].append(feature_rate(module, subset, args.batch_size, data.num_workers))
    for engine, module in modules.items():
        module.apply_phase("finetune")
        finetune_seconds_per_batch(module, batches[:1])
    for _ in range(args.rounds):
        for engine, module in modules.items():
            results["finetune"][engine].append(finetune_seconds_per_batch(module, batches))
    for _ in range(args.rounds):
        for engine in ENGINES:
            results["classify"][engine].append(classify_rate(trained, paths, engine, args.batch_size))
    engines = {engine: dict(modules[engine].engines_used) for engine in ENGINES}
    best = {
        "features": {engine: max(values) for engine, values in results["features"].items()},
        "finetune": {engine: min(values) for engine, values in results["finetune"].items()},
        "classify": {engine: max(values) for engine, values in results["classify"].items()},
    }
    rows = [
        (
            "feature extraction (img/s, decode incl.)",
            f"{best['features']['torch']:.1f} -> {best['features']['onnxruntime']:.1f}",
            f"{best['features']['onnxruntime'] / best['features']['torch']:.2f}x",
        ),
        (
            f"fine-tune step, top {args.unfreeze_blocks} blocks (s/batch)",
            f"{best['finetune']['torch']:.2f} -> {best['finetune']['onnxruntime']:.2f}",
            f"{best['finetune']['torch'] / best['finetune']['onnxruntime']:.2f}x",
        ),
        (
            "classify (img/s, decode incl.)",
            f"{best['classify']['torch']:.1f} -> {best['classify']['onnxruntime']:.1f}",
            f"{best['classify']['onnxruntime'] / best['classify']['torch']:.2f}x",
        ),
    ]
    print_table("torch -> onnxruntime (best of rounds; ratio = speed-up)", rows)
    print(f"engines used: {engines}")
    print(f"all rounds: {results}")


if __name__ == "__main__":
    record_results(main)
