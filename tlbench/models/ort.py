"""ONNX Runtime sessions: the one recipe for every graph tlbench runs (a light module: it never imports torch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tlbench.machine import usable_cores

# The input of every graph tlbench exports, and the output of a classifier's (class probabilities).
INPUT, PROBABILITIES = "images", "probabilities"


def ort_threads() -> int:
    """Intra-op threads for ONNX Runtime: as many as torch uses when torch is loaded (the two alternate on every
    training batch and must not compete for cores), else what torch would take (``OMP_NUM_THREADS``, the cores)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, int(threads)) if threads.isdigit() else usable_cores()


def ort_session(graph: Path | bytes, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` of ``graph`` (a file, or the graph itself) on the CPU with ``threads``
    intra-op threads (default ``ort_threads``), one inter-op thread and no spinning."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or ort_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = graph if isinstance(graph, bytes) else str(graph)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
