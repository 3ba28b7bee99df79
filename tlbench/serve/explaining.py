"""``POST /explain`` behind the page's "why?" toggle: the Grad-CAM overlay of an upload's predicted class.

The heatmap itself is ``tlbench.models.gradcam`` (the same code as ``tlbench explain`` and ``Model.explain``);
this module only keeps it safe to run inside the server:

- The explainer works on its own copy of the network. Captum hooks the target layer for the length of an
  explanation, and the predictor's micro-batched forward passes (torch engine) run through the same modules on
  another thread: on shared modules those hooks would catch the other pass's feature map.
- One explanation runs at a time (a lock, taken on the worker thread): the hooks are per module, so two at once
  on the copy would catch each other's maps; a forward and a backward pass are also the heaviest work the server
  does, and requests waiting for the lock still hold their concurrency slot, so the queue stays bounded.
- Without Captum, or for a backbone Grad-CAM cannot explain (a vision transformer), ``unavailable`` says why in
  one line; the server answers 501 with it and ``GET /model`` says ``"explain": false`` so the page hides the
  toggle.
"""

from __future__ import annotations

import base64
import copy
import io
import threading

from PIL import Image

from tlbench.errors import TLBenchError
from tlbench.models.gradcam import Explainer, require_captum
from tlbench.models.loading import TrainedModel


class UploadExplainer:
    """Grad-CAM of uploaded images with a private copy of ``trained``'s network, one image at a time."""

    def __init__(self, trained: TrainedModel) -> None:
        self.unavailable: str | None = None
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()
        try:
            require_captum()
            self._explainer = Explainer.of(copy.deepcopy(trained.model))
        except TLBenchError as error:
            self.unavailable = str(error)

    @property
    def available(self) -> bool:
        return self._explainer is not None

    def explain(self, image: Image.Image) -> dict:
        """The predicted class, its probability, the heatmap's peak and the overlay as a base64 PNG, all over
        ``image`` as decoded (uploads are reduced to twice the model's resize size before they get here)."""
        if self._explainer is None:  # the server answers 501 before it gets here
            raise RuntimeError(f"no explanations here: {self.unavailable}")
        with self._lock:
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
