"""Batched inference on PIL images with a trained model's own preprocessing (classify, serve, export parity)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from PIL import Image

from tlbench.data.transforms import eval_transform
from tlbench.models.loading import TrainedModel


class Predictor:
    def __init__(self, trained: TrainedModel, batch_size: int = 32) -> None:
        self.trained = trained
        self.transform = eval_transform(trained.preprocessing)
        self.batch_size = batch_size

    def tensor(self, images: Iterable[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities of an already preprocessed batch (the server stacks requests into one)."""
        return self.trained.model(batch).softmax(dim=1)

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
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [(self.trained.classes[i], float(v)) for v, i in zip(row_v, row_i)]
            for row_v, row_i in zip(values.tolist(), indices.tolist())
        ]
