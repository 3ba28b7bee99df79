"""Load a trained model from a run directory or a checkpoint, for classify, export and serve.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file
carrying a pickled code payload is refused before anything in it runs. The backbone is rebuilt without
downloading weights (the checkpoint has them) and with the preprocessing stored at training time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tlbench.data.transforms import Preprocessing
from tlbench.errors import TLBenchError
from tlbench.io import read_json
from tlbench.models.module import TransferLearningModule


@dataclass
class TrainedModel:
    model: TransferLearningModule
    classes: list[str]
    preprocessing: Preprocessing
    backbone: str
    phase: str
    source: Path


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint's contents, refusing pickled code and reporting truncation in one line."""
    path = Path(path)
    if not path.is_file():
        raise TLBenchError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for code payloads, RuntimeError/EOFError for truncation
        reason = "it contains objects other than tensors (refused: loading could run code)" if "weights_only" in str(error) or "Unsupported global" in str(error) else "it is truncated or not a checkpoint"
        raise TLBenchError(f"cannot load checkpoint {path}: {reason}; use a checkpoint written by tlbench") from None


def checkpoint_for_run(run_dir: Path, phase: str | None) -> Path:
    """The best checkpoint of ``phase`` (default: the last phase trained) recorded in a run's metrics.json."""
    metrics = read_json(run_dir / "metrics.json")
    phases = metrics.get("phases", {})
    if not phases:
        raise TLBenchError(f"{run_dir}/metrics.json lists no trained phase; finish the run or pass a .ckpt file")
    chosen = phase or ("finetune" if "finetune" in phases else next(iter(phases)))
    if chosen not in phases or not phases[chosen].get("best_ckpt"):
        raise TLBenchError(f"{run_dir} has no '{chosen}' phase; available: {', '.join(phases)}")
    return Path(phases[chosen]["best_ckpt"])


def model_from_checkpoint(checkpoint: dict, source: Path) -> TrainedModel:
    settings = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if not settings.get("classes"):
        raise TLBenchError(f"{source} has no class names; it was not written by tlbench fit")
    settings.update(pretrained=False, weights=None)
    model = TransferLearningModule(**settings)
    model.load_state_dict(checkpoint["state_dict"])
    if "tlbench_preprocessing" in checkpoint:
        model.preprocessing = Preprocessing.from_dict(checkpoint["tlbench_preprocessing"])
    model.weights_source = checkpoint.get("tlbench_weights", model.weights_source)
    phase = checkpoint.get("tlbench_phase", model.phase)
    model.apply_phase(phase)
    return TrainedModel(model.eval(), list(settings["classes"]), model.preprocessing, settings["backbone"], phase, source)


def load_trained(path: str | Path, phase: str | None = None) -> TrainedModel:
    """A model ready for inference from a run directory (``lightning_logs/<exp>/version_N``) or a ``.ckpt``."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "metrics.json").is_file():
            raise TLBenchError(f"{path} is not a tlbench run directory (no metrics.json); pass a run directory or a .ckpt file")
        path = checkpoint_for_run(path, phase)
    return model_from_checkpoint(read_checkpoint(path), path)
