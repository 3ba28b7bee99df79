"""The inference engine: every forward pass that needs no gradient, run by ONNX Runtime on a CPU or by torch.

On this project's 2-core CPU, ONNX Runtime runs a frozen EfficientNet-Lite0 about three times as fast as torch
(channels-last, inference mode): 156 vs 49 images/s at batch 32 (issue 13). ``Engine`` wraps one frozen network
(a whole backbone, the frozen layers below the fine-tuned blocks, or a classifier with its softmax):

* ``--engine torch`` runs the torch callable it was given, unchanged; ``auto`` picks ONNX Runtime on a CPU and
  torch on a GPU or under DDP (``resolve_engine``).
* On first use the network is exported with ``torch.onnx.export`` (opset 17, dynamic batch axis), or taken from
  the graph cache (the ``onnx`` kind of ``tlbench/cache.py``, keyed by the weights' hash, the architecture, the
  input shape and the split point; an entry is verified before ONNX Runtime loads it, and one it cannot load is
  exported again), or from a given file (a bundle's ``model.onnx``).
* Correctness first: the graph's output on that first real batch is compared with torch's; a max absolute
  difference above ``PARITY_TOLERANCE`` (relative beyond magnitude 1), or any failure to export or load, falls
  back to torch for good, with one warning that says why. The check is repeated whenever the network's weights
  or train/eval mode change, so a stale graph can never answer (a frozen layer that behaves differently in
  training mode, such as dropout, fails the check and runs in torch).
* ONNX Runtime gets as many intra-op threads as torch may use and one inter-op thread, with spinning off, so it
  never competes with torch (or itself) for cores when the two alternate on every training batch.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tlbench.cache import Cache
from tlbench.console import warn
from tlbench.errors import TLBenchError
from tlbench.models.backbones import evaluating
from tlbench.models.engine_name import ENGINES, EngineName
from tlbench.models.feature_cache import weights_digest
from tlbench.models.ort import INPUT, ort_session

# float32 outputs of the same graph agree to ~1e-6 (8e-6 measured on Lite0's pooled features); 1e-4 leaves room
# for kernel differences (onnxruntime's fused convolutions) while catching any real mismatch. It is absolute for
# outputs within [-1, 1] (probabilities, pooled features) and relative to the largest magnitude beyond: float
# rounding grows with the values, and a pretrained Lite0's activations after 13 layers reach ~20, where the two
# engines differ by 1.5e-4.
PARITY_TOLERANCE = 1e-4
# Images of the first batch the parity check runs through torch. In eval mode each image's output depends on that
# image alone, so the rows of ONNX Runtime's whole-batch answer for these few must match torch's output for them
# (a graph whose output depends on the batch size or the other images fails). A cold first torch
# call on 8 images cost a birds10 head phase 0.3-0.5 s more than on 2 (benchmarks/head_phase.py). Train-mode
# checks (batch statistics) compare the same images on both engines.
PARITY_IMAGES = 2
OPSET = 17
# Version of the export recipe in the graph cache key: entries of another recipe are not reused.
GRAPH_VERSION = 1
OUTPUT = "output"


def resolve_engine(choice: EngineName, device: torch.device, distributed: bool = False) -> str:
    """The engine ``choice`` means here: ONNX Runtime (CPU execution provider) only on a CPU outside DDP."""
    if choice not in ENGINES:
        raise TLBenchError(f"unknown engine {choice!r}; choose from {', '.join(ENGINES)}")
    if choice == "torch" or device.type != "cpu" or distributed:
        return "torch"
    return "onnxruntime"


def export_onnx(network: nn.Module, example: torch.Tensor, path: Path, output_name: str = OUTPUT) -> None:
    """``network`` (in eval mode) as an ONNX graph at ``path``: opset 17, input ``images`` and output
    ``output_name`` with a dynamic batch axis. Tracing needs ordinary tensors, so it leaves inference mode."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), evaluating(network):
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
        torch.onnx.export(
            network,
            (example.detach().cpu().clone().contiguous(),),
            str(path),
            dynamo=False,
            input_names=[INPUT],
            output_names=[output_name],
            dynamic_axes={INPUT: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
        )


def graph_key(network: nn.Module, example: torch.Tensor, split: str) -> str:
    """Cache key of ``network``'s graph: weights hash, architecture, input shape and dtype, split point, recipe."""
    parts = [
        weights_digest(network),
        hashlib.sha256(repr(network).encode()).hexdigest(),
        str(tuple(example.shape[1:])),
        str(example.dtype),
        split,
        f"opset{OPSET}",
        f"v{GRAPH_VERSION}",
        torch.__version__,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _fingerprint(network: nn.Module) -> tuple[tuple, tuple]:
    """(weights, modes): changes whenever a weight or buffer of ``network`` is replaced or modified in place (an
    optimizer step, a loaded state dict: both bump the tensor's version counter), or a layer's train/eval mode
    changes; cheap enough to take on every batch."""
    tensors = itertools.chain(network.parameters(), network.buffers())
    return tuple((id(t), t._version) for t in tensors), tuple(m.training for m in network.modules())


class Engine:
    """Runs ``network`` through ONNX Runtime where ``choice`` asks for it, else (or after a failed check)
    through ``reference``, the torch callable computing the same thing.

    Args:
        network: the frozen network to export; its output for a batch must equal ``reference``'s.
        reference: the torch path, called as is when torch runs (``--engine torch`` reproduces it exactly).
        choice: auto, torch or onnxruntime.
        device: where the inputs live; ONNX Runtime runs only for CPU inputs.
        label: what the network is, for the warning ("head-phase features", "frozen layers 0-5").
        split: the split point in the cache key ("pooled", "trunk5", "probabilities").
        graph: an existing graph to use instead of exporting (a bundle's ``model.onnx``).
        output_name: the graph's output name.
        distributed: under DDP ``auto`` keeps torch.
    """

    def __init__(
        self,
        network: nn.Module,
        reference: Callable[[torch.Tensor], torch.Tensor],
        choice: EngineName = "auto",
        device: torch.device | str = "cpu",
        label: str = "network",
        split: str = "output",
        graph: Path | None = None,
        output_name: str = OUTPUT,
        distributed: bool = False,
    ) -> None:
        self.network = network
        self.reference = reference
        self.name = resolve_engine(choice, torch.device(device), distributed)
        self.label = label
        self.split = split
        self.graph = graph
        self.output_name = output_name
        self.fallback_reason: str | None = None
        self.max_abs_diff: float | None = None
        self._session = None
        self.graph_key: str | None = None  # the graph cache entry in use, when it came from the cache
        self._session_weights: tuple | None = None
        self._checked_weights: tuple | None = None
        self._checked_modes: set[tuple] = set()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.name == "onnxruntime" and inputs.device.type != "cpu":
            self._fall_back(f"its inputs are on {inputs.device}")
        if self.name == "onnxruntime":
            weights, modes = fingerprint = _fingerprint(self.network)
            if weights != self._checked_weights or modes not in self._checked_modes:
                return self._start(inputs, fingerprint)
            return self._run(inputs)
        return self.reference(inputs)

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().float().contiguous().numpy()
        return torch.from_numpy(self._session.run([self.output_name], {INPUT: array})[0])

    def _start(self, inputs: torch.Tensor, fingerprint: tuple) -> torch.Tensor:
        """Export or load the graph for the current weights and check it against torch on the first
        ``PARITY_IMAGES`` images of ``inputs`` (in eval mode, ONNX Runtime's rows for them in the whole batch).
        A (weights, modes) pair passes once: validation switching the layers' modes back and forth does not check
        again. The answer for this batch is torch's when the check fails, else ONNX Runtime's."""
        sample = inputs[:PARITY_IMAGES]
        with torch.no_grad():
            expected = self.reference(sample)
        # In eval mode the sample's rows of the whole-batch answer are compared; in train mode (batch statistics)
        # ONNX Runtime runs the sample on its own.
        rows_of_the_batch = not any(fingerprint[1]) or len(sample) == len(inputs)
        try:
            if self._session is None or fingerprint[0] != self._session_weights:
                self._session = self._open_session(inputs)
                self._session_weights = fingerprint[0]
            answer = self._run(inputs)
            actual = answer[: len(sample)] if rows_of_the_batch else self._run(sample)
        except Exception as error:  # exporter and onnxruntime failures come in many types
            detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            self._fall_back(f"export or load failed ({type(error).__name__}{': ' + detail if detail else ''})")
            return self._torch_answer(inputs, sample, expected)
        reference = expected.detach().float().cpu()
        difference = float((reference - actual).abs().max()) if reference.numel() else 0.0
        tolerance = PARITY_TOLERANCE * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)
        if not difference <= tolerance:
            if self.graph is None:
                Cache("onnx").discard(graph_key(self.network, inputs, self.split))  # not kept
            self._fall_back(f"its output differs from torch's by {difference:.2e} > {tolerance:.2g}")
            return self._torch_answer(inputs, sample, expected)
        self.max_abs_diff = difference if self.max_abs_diff is None else max(self.max_abs_diff, difference)
        if fingerprint[0] != self._checked_weights:
            self._checked_weights, self._checked_modes = fingerprint[0], set()
        self._checked_modes.add(fingerprint[1])
        return answer

    def _torch_answer(self, inputs: torch.Tensor, sample: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """Torch's output for the whole batch after a failed check (the sample's, when the sample is the batch)."""
        if len(sample) == len(inputs):
            return expected
        with torch.no_grad():
            return self.reference(inputs)

    def _open_session(self, inputs: torch.Tensor):
        """A session on the given graph, or on the cached export of the network's current weights (exported and
        stored when missing, or when the cached one is corrupt or will not load)."""
        if self.graph is not None:
            return ort_session(self.graph)
        graphs = Cache("onnx")
        key = graph_key(self.network, inputs, self.split)
        session = graphs.get(key, ort_session)
        if session is None:
            with tempfile.TemporaryDirectory(prefix="tlbench-onnx-") as scratch:
                path = Path(scratch) / "graph.onnx"
                export_onnx(self.network, inputs, path, self.output_name)
                graph = path.read_bytes()
            graphs.put(key, graph)
            session = ort_session(graph)
        self.graph_key = key
        return session

    def _fall_back(self, reason: str) -> None:
        self.name = "torch"
        self.fallback_reason = reason
        self._session = None
        warn(f"ONNX Runtime not used for the {self.label}: {reason}; running it in torch")
