"""Classify without importing torch: ONNX Runtime runs a checkpoint's verified classifier graph, fed by numpy.

Importing torch, torchvision and timm is about half of a one-image ``classify`` (2.5 of 5 s on this project's
2-core machine; docs/speed.md "Start-up"). The first ``classify`` of a checkpoint takes the torch path
(``Predictor``): the classifier is exported to ONNX and its output checked against torch's on the first batch
(``Engine``). A graph that passed that check is kept in the ONNX graph cache (``tlbench/cache.py``) as a
classifier entry: the graph, the classes, the preprocessing, the backbone and the phase, keyed by the sha256 of
the checkpoint file. Every later ``classify`` of that file with ``--engine auto`` or ``onnxruntime`` (a run
directory resolves to its checkpoint through metrics.json) runs the entry instead and never imports torch.

Nothing here is trusted on sight: the key is the checkpoint's content, so a retrained or replaced checkpoint is a
miss; the cache verifies an entry's sha256 before it is read; an entry whose manifest does not parse or whose
graph ONNX Runtime cannot load is removed, and the torch path runs and stores it again. The numpy preprocessing
is ``eval_transform``'s arithmetic exactly (data/preprocessing.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from tlbench.cache import Cache
from tlbench.data.preprocessing import Preprocessing, eval_array
from tlbench.models.ort import INPUT, PROBABILITIES, ort_session
from tlbench.rundir import METRICS, checkpoint_for_run

if TYPE_CHECKING:
    from tlbench.models.loading import TrainedModel  # imports torch

# Version of the entry's layout (a JSON manifest line, then the graph) and of what produced it; part of the key.
CLASSIFIER_VERSION = 1
GRAPH_KIND = "onnx"


@dataclass
class GraphModel:
    """A trained classifier as ONNX Runtime runs it: what ``TrainedModel`` says about a model, without the torch
    network (``classify_files`` returns either)."""

    classes: list[str]
    preprocessing: Preprocessing
    backbone: str
    phase: str
    source: Path  # the checkpoint the graph was verified against
    session: Any  # onnxruntime.InferenceSession


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes (a 50 MB checkpoint: about 0.1 s)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def classifier_key(checkpoint: Path) -> str:
    return f"classifier-v{CLASSIFIER_VERSION}-{file_digest(checkpoint)}"


def checkpoint_of(model: str | Path, phase: str | None) -> Path | None:
    """The checkpoint file ``classify`` would load for ``model``: a ``.ckpt`` as given, a run directory's from its
    metrics.json; None for bundles, timm folders and anything that is not there (the torch path says why)."""
    path = Path(model).expanduser()
    if path.is_dir() and (path / METRICS).is_file():
        path = checkpoint_for_run(path, phase)
    return path if _is_checkpoint(path) else None


def _is_checkpoint(path: Path) -> bool:
    return path.suffix == ".ckpt" and path.is_file()


def remember_classifier(trained: TrainedModel, graph_key: str) -> bool:
    """Keep the graph under ``graph_key`` in the graph cache, checked against torch for ``trained``, as the
    classifier entry of the checkpoint ``trained`` was loaded from (bundles and timm folders get none)."""
    checkpoint, pre = trained.source, trained.preprocessing
    if not _is_checkpoint(checkpoint) or pre.crop_pct > 1:  # eval_array does not pad
        return False
    graphs = Cache(GRAPH_KIND)
    graph = graphs.get(graph_key)
    if graph is None:  # the cache could not keep it (unwritable, or a limit of 0)
        return False
    manifest = {
        "classes": trained.classes,
        "preprocessing": pre.to_dict(),
        "backbone": trained.backbone,
        "phase": trained.phase,
    }
    return graphs.put(classifier_key(checkpoint), json.dumps(manifest).encode() + b"\n" + graph)


def cached_classifier(model: str | Path, phase: str | None = None) -> GraphModel | None:
    """``model``'s classifier entry, ready to run, when an earlier ``classify`` verified and stored one."""
    checkpoint = checkpoint_of(model, phase)
    if checkpoint is None:
        return None

    def decode(payload: bytes) -> GraphModel:
        manifest_line, _, graph = payload.partition(b"\n")
        manifest = json.loads(manifest_line)
        classes = [str(name) for name in manifest["classes"]]
        session = ort_session(graph)
        if session.get_outputs()[0].shape[-1] != len(classes):
            raise ValueError("the graph's outputs do not match the classes")
        return GraphModel(
            classes,
            Preprocessing.from_dict(manifest["preprocessing"]),
            str(manifest["backbone"]),
            str(manifest["phase"]),
            checkpoint,
            session,
        )

    return Cache(GRAPH_KIND).get(classifier_key(checkpoint), decode)


class GraphPredictor:
    """``Predictor``'s interface for ``classify_paths`` (``transform``, ``batch``, ``forward``, ``label_top_k``),
    in numpy and ONNX Runtime."""

    def __init__(self, trained: GraphModel, batch_size: int = 32) -> None:
        self.trained = trained
        self.batch_size = batch_size

    def transform(self, image: Image.Image) -> np.ndarray:
        return eval_array(image, self.trained.preprocessing)

    @staticmethod
    def batch(items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self.trained.session.run([PROBABILITIES], {INPUT: batch})[0]

    def label_top_k(self, probs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        return top_k_labels(probs, self.trained.classes, k)


def top_k_labels(probs: np.ndarray, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable ``(class, probability)`` pairs of each row of ``probs``, best first (ties: the
    class listed first); ``Predictor`` and ``GraphPredictor`` both answer with it."""
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[i], float(row[i])) for i in order] for row, order in zip(probs, best)]
