"""Grad-CAM explanations: where in an image the trained model looked for the class it predicted.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional feature map by the mean gradient of the
class score with respect to it; the positive part of the weighted sum, upsampled to the image, is the heatmap.
It is computed with Captum's ``LayerGradCam`` on the final model's last block group: the last part of the
backbone that still has a spatial map (EfficientNet: ``conv_head``/``bn2``, the 1x1 convolution over the last
block's 7x7 grid; the cnn6/cnn1 baselines: their last stage; ResNet: ``layer4``; VGG: ``features``). Earlier
layers give sharper but less class-specific maps; after pooling there is no "where" left.

The heatmap is mapped back through the model's own preprocessing (resize, centre crop) onto the original image,
so the overlay shows the whole photo and the strip the crop cut off stays cold: the model never saw it.

Captum is an optional extra (``pip install 'tlbench[explain]'``): one package on top of torch, where the
``grad-cam`` package brings OpenCV, SciPy and scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlbench.data.images import ImageLoadError, load_rgb
from tlbench.data.transforms import Preprocessing, eval_transform
from tlbench.errors import TLBenchError
from tlbench.evaluation.plots import Overlays, overlay_heatmap
from tlbench.models.backbones import HEAD_MODULES, FeatureExtractor, evaluating

INSTALL_HINT = "pip install 'tlbench[explain]' (or pip install captum)"


def captum_available() -> bool:
    """Whether Grad-CAM can run here: the evaluation's top-losses figure shows overlays only then."""
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        return False
    return True


def require_captum() -> None:
    if not captum_available():
        raise TLBenchError(f"explanations need Captum, which is not installed; {INSTALL_HINT}")


def target_layer(extractor: FeatureExtractor, input_size: int) -> tuple[str, nn.Module]:
    """The backbone's last top-level layer with a spatial output (``N x C x H x W``, H or W above 1), by name.

    Found by running one blank image with a hook on every top-level child: a child's name says little across
    timm's families, its output's shape says whether a "where" is left. A backbone without one (a vision
    transformer's tokens) is refused in one line.
    """
    children = [(name, child) for name, child in extractor.model.named_children() if name not in HEAD_MODULES]
    shapes: dict[str, torch.Size] = {}
    hooks = [
        child.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, getattr(out, "shape", ())))
        for name, child in children
    ]
    try:
        with evaluating(extractor), torch.no_grad():
            parameter = next(extractor.parameters())
            extractor.model.forward_features(
                torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype)
            )
    finally:
        for hook in hooks:
            hook.remove()
    spatial = [
        (name, child) for name, child in children if len(shapes.get(name, ())) == 4 and max(shapes[name][2:]) > 1
    ]
    if not spatial:
        raise TLBenchError(
            f"Grad-CAM needs a convolutional feature map, and {type(extractor.model).__name__} has none"
            " (a transformer's tokens are not one); explain a model with a CNN backbone"
        )
    return spatial[-1]


def crop_box(width: int, height: int, pre: Preprocessing) -> tuple[float, float, float]:
    """``(left, top, side)`` of the centre crop the eval transform takes, in the original image's pixels: the
    part of the image the network sees, where its heatmap belongs."""
    scale = pre.resize_size / min(width, height)
    resized_w, resized_h = (
        (pre.resize_size, int(pre.resize_size * height / width))
        if width <= height
        else (int(pre.resize_size * width / height), pre.resize_size)
    )
    left = int(round((resized_w - pre.input_size) / 2.0))
    top = int(round((resized_h - pre.input_size) / 2.0))
    return left / scale, top / scale, pre.input_size / scale


def to_image_frame(heatmap: np.ndarray, width: int, height: int, pre: Preprocessing) -> np.ndarray:
    """A heatmap over the network's input (``input_size`` square) as one over the original image, zero outside
    the crop."""
    left, top, side = crop_box(width, height, pre)
    size = max(1, round(side))
    resized = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    canvas = np.zeros((height, width), dtype=np.float32)
    x0, y0 = round(left), round(top)
    # the crop lies inside the image up to rounding: clip the pasted square to the canvas
    xs, ys = max(0, -x0), max(0, -y0)
    xe, ye = min(size, width - x0), min(size, height - y0)
    canvas[y0 + ys : y0 + ye, x0 + xs : x0 + xe] = resized[ys:ye, xs:xe]
    return canvas


@dataclass
class Explanation:
    """One image explained: the predicted class and its probability, and the Grad-CAM heatmap of that class
    over the original image (``H x W`` in 0..1, 1 at the peak; all zero when nothing pointed to the class)."""

    path: str
    label: str
    probability: float
    heatmap: np.ndarray
    image: Image.Image

    @property
    def peak(self) -> tuple[int, int]:
        """``(x, y)`` of the heatmap's hottest pixel in the original image."""
        y, x = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(x), int(y)

    def overlay(self) -> np.ndarray:
        """The image with the heatmap blended over it, ``H x W x 3`` uint8."""
        return overlay_heatmap(np.asarray(self.image), self.heatmap)


class Explainer:
    """Grad-CAM of a backbone and head (a ``Network``'s: a loaded model's, or a ``TransferLearningModule``'s) on PIL
    images.

    The network runs in torch whatever engine predicts: Grad-CAM needs gradients, which ONNX Runtime has not.
    Gradients flow even through frozen weights (Captum asks for them on the target layer's output), and no
    weight is changed: the model is put in eval mode only while it explains.
    """

    def __init__(
        self, backbone: FeatureExtractor, head: nn.Module, classes: list[str], preprocessing: Preprocessing
    ) -> None:
        require_captum()
        from captum.attr import LayerGradCam

        self.classes = classes
        self.preprocessing = preprocessing
        self.transform = eval_transform(preprocessing)
        self.network = nn.Sequential(backbone, head)
        self.layer_name, layer = target_layer(backbone, preprocessing.input_size)
        self.gradcam = LayerGradCam(self.network, layer)

    @classmethod
    def of(cls, model: nn.Module) -> Explainer:
        """The explainer of a ``Network``: one loaded for inference, or a ``TransferLearningModule`` being tested."""
        return cls(model.backbone, model.head, list(model.classes), model.preprocessing)

    def explain(self, images: list[Image.Image], names: list[str], batch_size: int = 16) -> list[Explanation]:
        """The predicted class of each image and its heatmap, ``batch_size`` images per forward and backward pass.

        Runs with gradients on even inside an inference-mode block (Lightning's test loop), where the top-losses
        figure asks for it.
        """
        device = next(self.network.parameters()).device
        results = []
        with torch.inference_mode(False), torch.enable_grad(), evaluating(self.network):
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                batch = torch.stack([self.transform(image) for image in chunk]).to(device)
                with torch.no_grad():
                    probs = self.network(batch).softmax(dim=1)
                best = probs.argmax(dim=1)
                maps = self.gradcam.attribute(batch, target=best, relu_attributions=True)
                size = self.preprocessing.input_size
                maps = nn.functional.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
                maps = maps[:, 0].detach().float().cpu().numpy()
                for offset, (image, heatmap) in enumerate(zip(chunk, maps)):
                    peak = float(heatmap.max())
                    scaled = heatmap / peak if peak > 0 else np.zeros_like(heatmap)
                    index = int(best[offset])
                    results.append(
                        Explanation(
                            names[start + offset],
                            self.classes[index],
                            float(probs[offset, index]),
                            to_image_frame(scaled, image.width, image.height, self.preprocessing),
                            image,
                        )
                    )
        return results

    def overlays(self, paths: list[Path]) -> list[np.ndarray | None]:
        """Overlays of image files (None for a file that does not decode): what the top-losses figure shows."""
        loaded = {}
        for path in paths:
            try:
                loaded[path] = load_rgb(path)
            except ImageLoadError:
                continue
        explained = dict(zip(loaded, self.explain(list(loaded.values()), [str(p) for p in loaded])))
        return [explained[path].overlay() if path in explained else None for path in paths]


def overlays_of(model: nn.Module) -> Overlays | None:
    """What a run's top-losses figure shows for a ``TransferLearningModule`` being tested: Grad-CAM overlays when
    Captum is installed, the explainer built only once a figure has mistakes to show. A backbone Grad-CAM cannot
    explain (no spatial map) keeps the plain images: the figure must never cost the run."""
    if not captum_available():
        return None

    def overlays(paths: list[Path]) -> list[np.ndarray | None]:
        try:
            explainer = Explainer.of(model)
        except TLBenchError:
            return [None] * len(paths)
        return explainer.overlays(paths)

    return overlays
