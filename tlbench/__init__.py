"""tlbench: transfer-learning image classification experiments on PyTorch Lightning and timm."""

__version__ = "0.1.0"
