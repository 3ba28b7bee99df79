"""The classification head put on top of a backbone's pooled features."""

from __future__ import annotations

from torch import nn


class ClassifierHead(nn.Sequential):
    """Linear(hidden) -> ReLU -> Dropout -> Linear(classes), the study's Dense 1024 head; ``hidden=0`` is a
    linear probe."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        if hidden > 0:
            layers = [
                nn.Linear(in_features, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            ]
        else:
            layers = [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
        super().__init__(*layers)
