"""``POST /explain`` behind the page's "why?" toggle: the Grad-CAM overlay of an upload's predicted class.

The heatmap itself is ``tlbench.models.gradcam`` (the same code as ``tlbench explain`` and ``Model.explain``);
this module only keeps it safe to run inside the server:

- The explainer works on its own copy of the network. Captum hooks the target layer for the length of an
  explanation, and the predictor's micro-batched forward passes (torch engine) run through the same modules on
  another thread: on shared modules those hooks would catch the other pass's feature map.
- One explanation runs at a time (a lock, taken on the worker thread): the hooks are per module, so two at once
  on the copy would catch each other's maps; a forward and a backward pass are also the heaviest work the server
  does, and requests waiting for the lock still hold their concurrency slot, so the queue stays bounded.
- Nothing of it is loaded until the first explanation: Captum (which imports matplotlib), the Grad-CAM module
  and the network's copy add about 60 MiB to a server that may never be asked "why?", and the memory budget
  under attack is the server's.
- Without Captum, ``unavailable`` says why in one line from the start; for a backbone Grad-CAM cannot explain
  (a vision transformer), from the first request on. The server answers 501 with it and ``GET /model`` says
  ``"explain": false`` so the page hides the toggle.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import io
import threading
from typing import TYPE_CHECKING

from PIL import Image

from tlbench.errors import TLBenchError
from tlbench.models.loading import TrainedModel

if TYPE_CHECKING:
    from tlbench.models.gradcam import Explainer


class ExplanationUnavailable(Exception):
    """This server cannot explain; the message is the ``TLBenchError`` that said why (and what to install), and
    the server answers 501 with it."""


class UploadExplainer:
    """Grad-CAM of uploaded images with a private copy of ``trained``'s network, one image at a time, set up on
    the first request."""

    def __init__(self, trained: TrainedModel) -> None:
        self.unavailable: str | None = None
        self._trained = trained
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()
        if importlib.util.find_spec("captum") is None:
            self._set_up()  # only to word the reason

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def _set_up(self) -> None:
        from tlbench.models.gradcam import Explainer

        try:
            self._explainer = Explainer.of(copy.deepcopy(self._trained.model))
        except TLBenchError as error:
            self.unavailable = str(error)

    def explain(self, image: Image.Image) -> dict:
        """The predicted class, its probability, the heatmap's peak and the overlay as a base64 PNG, all over
        ``image`` as decoded (uploads are reduced to twice the model's resize size before they get here).

        Raises ``ExplanationUnavailable`` when this model or server cannot explain."""
        with self._lock:
            if self._explainer is None and self.unavailable is None:
                self._set_up()
            if self._explainer is None:
                raise ExplanationUnavailable(self.unavailable)
            item = self._explainer.explain([image], ["upload"])[0]
        buffer = io.BytesIO()
        Image.fromarray(item.overlay()).save(buffer, "PNG")
        x, y = item.peak
        return {
            "label": item.label,
            "prob": item.probability,
            "layer": self._explainer.layer_name,
            "width": image.width,
            "height": image.height,
            "peak": {"x": x, "y": y},
            "overlay_png": base64.b64encode(buffer.getvalue()).decode("ascii"),
        }
