"""tlbench: transfer-learning image classification experiments on PyTorch Lightning and timm.

``tlbench.fit``, ``tlbench.load`` and their results are the Python API (see ``tlbench.api``); they are imported
on first use, so ``import tlbench`` and commands that need no model stay light.
"""

__version__ = "0.1.0"
__all__ = ["Model", "Prediction", "Run", "fit", "load"]


def __getattr__(name: str):
    if name in __all__:
        from tlbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'tlbench' has no attribute {name!r}")
