"""The ``--engine`` choice as a type, in a module that imports nothing heavy: a command's ``--help`` and its
argument errors are read from its signature, and must not wait for torch (models/engine.py runs the engines)."""

from __future__ import annotations

from typing import Literal, get_args

EngineName = Literal["auto", "torch", "onnxruntime"]
ENGINES: tuple[str, ...] = get_args(EngineName)
