"""Backbones by timm name, with weights resolved offline-first and grouped into blocks for fine-tuning."""

from __future__ import annotations

import difflib
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import get_arch_pretrained_cfgs, group_parameters, parse_model_name, split_model_name_tag
from torch import nn

from tlbench.data.transforms import Preprocessing
from tlbench.errors import TLBenchError
from tlbench.models import baselines  # noqa: F401  registers cnn6/cnn1 with timm
from tlbench.models.weights import EMBEDDED_WEIGHTS, load_into, read_state_dict

# The default backbone of fit, check and the Python API: the recipe grid's choice (docs/results.md).
DEFAULT_BACKBONE = "efficientnet_lite2"
BACKBONE_ALIASES = {"xception": "legacy_xception"}
NAME_FORMS = (
    "a timm model name with an optional pretrained tag (resnet50, resnet50.a1_in1k), hf-hub:ORG/REPO,"
    " local-dir:FOLDER (timm's config.json + weights), or cnn6 / cnn1"
)


def resolve_name(name: str) -> str:
    """``name`` as ``timm.create_model`` takes it, checked in one line before anything is built or fetched.

    Registry names may carry a pretrained tag (``resnet50.a1_in1k``: those weights, not the default ones), and
    the study's aliases (``xception``) are replaced. ``hf-hub:`` ids are checked when fetched; a ``local-dir:``
    folder must hold timm's ``config.json``.
    """
    try:
        source, model_id = parse_model_name(name)
    except ValueError as error:
        raise TLBenchError(f"backbone '{name}': {error}; use {NAME_FORMS}") from None
    if source == "local-dir":
        if not (Path(model_id).expanduser() / "config.json").is_file():
            raise TLBenchError(
                f"backbone '{name}': {model_id} has no config.json; write the folder with"
                " timm.models.save_for_hf(model, FOLDER) (config.json + weights)"
            )
        return f"{source}:{Path(model_id).expanduser()}"
    if source is not None:
        return name
    arch, tag = split_model_name_tag(model_id)
    arch = BACKBONE_ALIASES.get(arch, arch)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch.lower(), timm.list_models(), n=3, cutoff=0.7)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TLBenchError(f"unknown backbone '{name}'; {hint}use {NAME_FORMS}")
    tags = [known.split(".", 1)[1] for known in get_arch_pretrained_cfgs(arch) if "." in known]
    if tag and tag not in tags:
        known = (
            f"use one of its tags: {', '.join(tags)}" if tags else f"it has no pretrained tags: use {arch} without one"
        )
        raise TLBenchError(f"backbone '{name}': {arch} has no pretrained tag '{tag}'; {known}")
    return f"{arch}.{tag}" if tag else arch


def create_classifier(
    name: str, pretrained: bool = True, weights: str | None = None, num_classes: int = 1000
) -> tuple[nn.Module, str]:
    """A timm model with its ``num_classes`` classifier and the description of the weights it got.

    Preference: explicit ``weights`` file, embedded offline weights, timm's own loading (hub download, or the
    weights of a ``local-dir:`` folder). ``pretrained=False`` (or a from-scratch baseline) gives random
    initialisation. Embedded weights serve untagged names only: they are Google's TF-trained EfficientNet-Lite
    weights (timm's ``tf_efficientnet_liteN.in1k``), not timm's ``efficientnet_liteN.ra_in1k`` retraining, so a
    tagged name asks for other weights than the embedded ones.
    """
    name = resolve_name(name)
    if weights:
        model = _create(name, pretrained=False, num_classes=num_classes)
        load_into(model, read_state_dict(weights), f"weights file {weights}")
        return model, f"file:{weights}"
    if not pretrained or name in baselines.BASELINES:
        return _create(name, pretrained=False, num_classes=num_classes), "random"
    if name in EMBEDDED_WEIGHTS:
        embedded = EMBEDDED_WEIGHTS[name]
        model = timm.create_model(name, pretrained=False, num_classes=1000)
        load_into(model, read_state_dict(embedded.path()), f"embedded weights of {embedded.package}")
        model.pretrained_cfg = {**model.pretrained_cfg, **embedded.preprocessing}
        if num_classes != 1000:
            model.reset_classifier(num_classes)
        return model, f"embedded:{embedded.package}"
    model = _create(name, pretrained=True, num_classes=num_classes)
    if name.startswith("local-dir:"):
        return model, name
    return model, f"timm-hub:{model.pretrained_cfg.get('hf_hub_id') or name}"


def _create(name: str, pretrained: bool, num_classes: int) -> nn.Module:
    """``timm.create_model``; whatever it has to fetch (hub weights or config, a folder's files) fails in one line."""
    if not pretrained and parse_model_name(name)[0] is None:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    try:
        with _offline_unless_reachable():
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    except Exception as error:  # hub failures surface as many exception types (socket, HTTP, huggingface_hub)
        raise TLBenchError(_fetch_failure(name, error)) from None


def _fetch_failure(name: str, error: Exception) -> str:
    if name.startswith("local-dir:"):
        reason = f"{type(error).__name__}: {str(error).splitlines()[0]}" if str(error) else type(error).__name__
        return (
            f"cannot build backbone '{name}' from its folder ({reason}); it needs timm's config.json and, for"
            " pretrained weights, model.safetensors or pytorch_model.bin; write the folder with"
            " timm.models.save_for_hf(model, FOLDER)"
        )
    fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" (it caches them)"
    if name.startswith("hf-hub:"):  # its config too comes from the hub, so no offline alternative applies
        return (
            f"could not download '{name}' from the Hugging Face hub ({type(error).__name__}); run once on a machine"
            f" with network: {fetch}"
        )
    arch = split_model_name_tag(name)[0]
    offline = arch in EMBEDDED_WEIGHTS and arch != name
    embedded = f", or --model.backbone {arch} (embedded weights, offline)" if offline else ""
    return (
        f"could not download ImageNet weights for '{name}' from the timm hub ({type(error).__name__}); run once on"
        f" a machine with network: {fetch}, or save them and pass --model.weights PATH (.pth/.safetensors), or"
        f" --model.pretrained false{embedded}"
    )


@contextmanager
def _offline_unless_reachable(host: str = "huggingface.co"):
    """Without DNS for the hub, use only the local cache: a clear error now beats a minute of retries."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


@contextmanager
def evaluating(module: nn.Module):
    """Eval mode for a side computation, then each layer's own mode back: ``train(True)`` would also wake the
    frozen BatchNorm layers that fine-tuning keeps in eval mode."""
    modes = {layer: layer.training for layer in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for layer, training in modes.items():
            layer.train(training)


# Children of timm models that map features to logits, never part of ``forward_features``.
HEAD_MODULES = frozenset(
    {"global_pool", "classifier", "fc", "head", "head_drop", "last_linear", "pre_logits", "fc_norm"}
)


def _open_sequentials(modules: list[nn.Module]) -> list[nn.Module]:
    opened = []
    for module in modules:
        opened.extend(_open_sequentials(list(module.children())) if type(module) is nn.Sequential else [module])
    return opened


class FeatureExtractor(nn.Module):
    """A timm model without its classifier, returning one pooled feature vector per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model.reset_classifier(0)
        self.model = model
        self.native_input = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
        with evaluating(self), torch.no_grad():
            self.num_features = int(self(torch.zeros(1, *self.native_input)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.model.forward_features(x))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 4:
            return features.mean(dim=(2, 3))
        return self.model.forward_head(features, pre_logits=True)

    def layer_chain(self) -> list[nn.Module] | None:
        """The layers ``forward_features`` applies one after another, or None when it is not such a chain.

        Most CNNs (EfficientNet, ResNet, VGG, Inception, Xception, the baselines) are a chain of their children,
        with ``nn.Sequential`` stages opened up; transformers and models with skips across stages are not. The
        chain is only trusted after it reproduced ``forward_features`` on a test input, so a model it does not
        describe falls back to running whole, never to a wrong result.
        """
        if not hasattr(self, "_chain"):
            self._chain = self._verified_chain()
        return self._chain

    def _verified_chain(self) -> list[nn.Module] | None:
        chain = _open_sequentials([child for name, child in self.model.named_children() if name not in HEAD_MODULES])
        device = next(self.parameters()).device
        try:
            with evaluating(self), torch.no_grad():
                probe = torch.randn(2, *self.native_input, generator=torch.Generator().manual_seed(0)).to(device)
                expected = self.model.forward_features(probe)
                for layer in chain:
                    probe = layer(probe)
                matches = probe.shape == expected.shape and torch.allclose(probe, expected, rtol=1e-4, atol=1e-5)
        except Exception:  # a child that is not a layer of the chain (ModuleList, a dict-taking block): no chain
            matches = False
        return chain if matches else None

    def forward_until(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Activations after the first ``depth`` layers of ``layer_chain()``."""
        for layer in self.layer_chain()[:depth]:
            x = layer(x)
        return x

    def forward_from(self, activations: torch.Tensor, depth: int) -> torch.Tensor:
        """Pooled features from activations after ``depth`` layers:
        ``forward_from(forward_until(x, d), d) == forward(x)``."""
        for layer in self.layer_chain()[depth:]:
            activations = layer(activations)
        return self.pool(activations)

    def block_groups(self) -> list[list[nn.Parameter]]:
        """Parameters grouped bottom (stem) to top, using timm's own block grouping when the model has one."""
        if hasattr(self.model, "group_matcher"):
            groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
            named = dict(self.model.named_parameters())
            return [[named[n] for n in names] for _, names in sorted(groups.items())]
        return [list(child.parameters()) for child in self.model.children() if any(True for _ in child.parameters())]

    def top_blocks(self, count: int) -> list[nn.Parameter]:
        """Parameters of the top ``count`` blocks; -1 means every block."""
        groups = self.block_groups()
        chosen = groups if count < 0 else groups[len(groups) - count :] if count > 0 else []
        return [p for group in chosen for p in group]


@dataclass
class Backbone:
    extractor: FeatureExtractor
    preprocessing: Preprocessing
    weights: str


def create_backbone(
    name: str, pretrained: bool = True, weights: str | None = None, input_size: int | None = None
) -> Backbone:
    model, source = create_classifier(name, pretrained, weights, num_classes=1000 if pretrained else 0)
    preprocessing = Preprocessing.from_timm_config(model.pretrained_cfg)
    if input_size:
        preprocessing = Preprocessing(
            input_size, preprocessing.interpolation, preprocessing.mean, preprocessing.std, preprocessing.crop_pct
        )
    return Backbone(FeatureExtractor(model), preprocessing, source)
