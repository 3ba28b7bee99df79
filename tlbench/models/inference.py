"""Batched inference on PIL images with a trained model's own preprocessing (classify, check, serve, the API's
``predict``, export parity), through the inference engine (``models/engine.py``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from PIL import Image
from torch import nn

from tlbench.data.transforms import eval_transform
from tlbench.models.engine import Engine
from tlbench.models.engine_name import EngineName
from tlbench.models.graph_classifier import top_k_labels
from tlbench.models.loading import BUNDLE_ONNX, TrainedModel
from tlbench.models.network import Network
from tlbench.models.ort import PROBABILITIES


class ProbabilityNetwork(nn.Module):
    """Network and softmax as a plain module: what ONNX and TorchScript consumers get, from a normalised
    ``N x 3 x S x S`` float batch to class probabilities. A ``Network`` contributes its backbone and head (its
    own ``forward`` also takes uint8 images; a ``TransferLearningModule`` cannot be traced: tracing probes its
    ``trainer`` property, which raises); any other classifier (``check``'s ImageNet model) is used whole."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.network = nn.Sequential(model.backbone, model.head) if isinstance(model, Network) else model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.network(batch).softmax(dim=1)


class Predictor:
    """Class probabilities of PIL images in ``batch_size`` batches.

    Args:
        trained: the model.
        batch_size: images per forward pass.
        engine: auto (ONNX Runtime on a CPU), torch or onnxruntime. ONNX Runtime runs a bundle's ``model.onnx``
            when there is one, else the model exported on first use (and cached); either is checked against
            torch on the first batch, falling back to torch with a warning.
    """

    def __init__(self, trained: TrainedModel, batch_size: int = 32, engine: EngineName = "auto") -> None:
        self.trained = trained
        self.transform = eval_transform(trained.preprocessing)
        self.batch_size = batch_size
        bundled = trained.source / BUNDLE_ONNX if trained.source.is_dir() else None
        self.engine = Engine(
            ProbabilityNetwork(trained.model).eval(),
            self._torch_forward,
            engine,
            next(trained.model.parameters()).device,
            f"{trained.backbone} classifier",
            PROBABILITIES,
            graph=bundled if bundled is not None and bundled.is_file() else None,
            output_name=PROBABILITIES,
        )

    def tensor(self, images: Iterable[Image.Image]) -> torch.Tensor:
        return self.batch([self.transform(image) for image in images])

    @staticmethod
    def batch(items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def _torch_forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.trained.model(batch).softmax(dim=1)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities of an already preprocessed batch (the server stacks requests into one)."""
        return self.engine(batch)

    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """Class probabilities, one row per image, in ``trained.classes`` order."""
        outputs = [
            self.forward(self.tensor(images[i : i + self.batch_size])) for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(outputs) if outputs else torch.empty(0, len(self.trained.classes))

    def top_k(self, images: list[Image.Image], k: int = 3) -> list[list[tuple[str, float]]]:
        return self.label_top_k(self.probabilities(images), k)

    def label_top_k(self, probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class, probability)`` pairs of each row of ``probs``, best first."""
        return top_k_labels(probs.detach().float().cpu().numpy(), self.trained.classes, k)
