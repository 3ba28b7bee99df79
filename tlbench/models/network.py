"""``Network``: what a trained run is, a timm backbone without its classifier and tlbench's head, as a plain module.

It is built from the few settings that shape it (``ARCHITECTURE_SETTINGS``), so inference (``loading.py``:
classify, serve, export, check, ``tlbench.load``) imports neither Lightning nor torchmetrics (docs/speed.md
"Start-up" measures what that saves). ``TransferLearningModule``
is a ``Network`` that also knows how to train, not a copy of it: the one definition gives both the same
state-dict keys (``backbone.*``, ``head.*``), so a checkpoint's ``state_dict`` or a bundle's weights load into
either as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from tlbench.models.backbones import DEFAULT_BACKBONE, create_backbone
from tlbench.models.heads import ClassifierHead

# The settings that shape the network (and so a checkpoint's tensors); every other setting of a run only steers
# training. A bundle's manifest stores these under "model".
ARCHITECTURE_SETTINGS = ("backbone", "input_size", "head_hidden", "head_dropout", "classes")


class Network(nn.Module):
    """Backbone and head, with the backbone's preprocessing; ``forward`` takes ``uint8`` images or normalised float
    ones and returns logits.

    Args:
        backbone: timm model name, optionally with a pretrained tag, an hf-hub:ORG/REPO or local-dir:FOLDER id, or
            cnn6/cnn1.
        pretrained: start from ImageNet weights (inference passes False: the checkpoint has the weights).
        weights: a local .pth/.safetensors file with backbone weights; wins over ``pretrained``.
        input_size: override the backbone's native input resolution (pixels).
        head_hidden: width of the head's hidden layer; 0 for a linear head.
        head_dropout: dropout before the head's last layer.
        classes: class names in label order; without them there is no head until ``build_head``.
        channels_last: run the backbone in channels-last memory layout (faster convolutions with oneDNN).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        input_size: int | None = None,
        head_hidden: int = 1024,
        head_dropout: float = 0.5,
        classes: list[str] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        built = create_backbone(backbone, pretrained, weights, input_size)
        self.backbone = built.extractor
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.preprocessing = built.preprocessing
        self.weights_source = built.weights
        self.architecture: dict = {
            "backbone": backbone,
            "input_size": input_size,
            "head_hidden": head_hidden,
            "head_dropout": head_dropout,
            "classes": None,
        }
        self.head: nn.Module | None = None
        if classes:
            self.build_head(classes)

    def build_head(self, classes: list[str]) -> None:
        """A new head for ``classes`` on the backbone's pooled features."""
        self.architecture["classes"] = list(classes)
        hidden, dropout = self.architecture["head_hidden"], self.architecture["head_dropout"]
        self.head = ClassifierHead(self.backbone.num_features, len(classes), hidden, dropout)

    @property
    def classes(self) -> list[str]:
        return list(self.architecture["classes"] or [])

    def _network_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalise ``uint8`` images on this device; channels-last layout when enabled (set on the uint8 batch,
        before normalising, so the one layout copy moves a quarter of the bytes)."""
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.preprocessing.normalize(inputs) if inputs.dtype == torch.uint8 else inputs

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of ``uint8`` or normalised float images."""
        return self.backbone(self._network_input(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(images))
