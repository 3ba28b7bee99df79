"""``TransferLearningModule``: a timm backbone, a new head, and the two-phase recipe of the 2017 study.

Phase "head" trains the head on a frozen backbone whose BatchNorm layers stay in eval mode, so running
statistics are bit-identical before and after. Phase "finetune" unfreezes the top ``unfreeze_blocks`` blocks
with its own optimizer and learning rate. The phase is stored in every checkpoint and re-applied before the
optimizer is built on resume, so a run killed after the boundary resumes fine-tuning, not frozen (PL #21901).
The boundary epoch (``finetune_start``) is stored too: ``head_patience`` may move it earlier during the fit.

Optional recipe controls, all off by default: layer-wise learning-rate decay, no weight decay on norms and biases,
linear warmup per phase, early stopping per phase (``PhaseSchedule``), and timm's Mixup/CutMix.
"""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
from timm.data import Mixup
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tlbench.errors import TLBenchError
from tlbench.models.backbones import DEFAULT_BACKBONE
from tlbench.models.engine import Engine, resolve_engine
from tlbench.models.engine_name import EngineName
from tlbench.models.network import Network

Phase = Literal["head", "finetune"]
# What a batch's inputs are: uint8 "images", the backbone's "pooled" features, or (an int d) the activations after
# the first d layers of the backbone's ``layer_chain()``.
BatchInputs = Literal["images", "pooled"] | int
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]
Budget = Literal["fast", "default", "thorough"]

# The fine-tune phase's length when ``finetune_epochs`` is left to the rule: about this many training images seen
# (augmented, with repeats), whatever the dataset's size. BiT's HyperRule in spirit — a fixed amount of training for
# every small dataset, so fewer images get more epochs — counted in images rather than steps, so that a fit's time
# follows the budget: each image costs one forward and backward pass of the unfrozen blocks.
FINETUNE_BUDGETS: dict[str, int] = {"fast": 1500, "default": 4000, "thorough": 12000}
# At least two epochs (one warms up, one decays), at most 30 (a 36-image set stops at 1,080 images seen).
FINETUNE_EPOCHS_RANGE = (2, 30)


def finetune_epochs_for(train_images: int, budget: Budget) -> int:
    """The declared rule: ``round(FINETUNE_BUDGETS[budget] / train_images)`` epochs, within
    ``FINETUNE_EPOCHS_RANGE``. It depends on the training split's size only: not on the class count, not on the
    machine (a time-based rule would make a run's result depend on how busy the computer was)."""
    low, high = FINETUNE_EPOCHS_RANGE
    return max(low, min(high, round(FINETUNE_BUDGETS[budget] / max(1, train_images))))


def build_optimizer(
    name: OptimizerName, params, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The fused kernels (CPU and CUDA) where PyTorch has them: the same update up to float rounding, and on this CPU
    an AdamW step over EfficientNet-Lite0's head takes 0.6 ms instead of 2-6 ms, most of a head-phase step.
    Devices without fused kernels get the plain implementation."""
    params = list(params)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    optimizer, settings = {
        "sgd": (torch.optim.SGD, {"momentum": momentum}),
        "adam": (torch.optim.Adam, {}),
        "adamw": (torch.optim.AdamW, {}),
    }[name]
    try:
        return optimizer(params, lr=lr, weight_decay=weight_decay, fused=True, **settings)
    except RuntimeError:  # "fused=True requires all the params to be floating point Tensors of supported devices"
        return optimizer(params, lr=lr, weight_decay=weight_decay, **settings)


def check_recipe_options(options: dict) -> None:
    """Refuse, in one line naming the option, recipe-control values that have no meaning."""
    at_least_one_or_none = (lambda value: value is None or value >= 1, "an integer >= 1, or null for never")
    non_negative = (lambda value: value >= 0, ">= 0")
    rules = {
        "layer_decay": (lambda value: value is None or 0 < value <= 1, "in (0, 1], or null for no decay"),
        "warmup_epochs": non_negative,
        "head_warmup_epochs": non_negative,
        "head_patience": at_least_one_or_none,
        "finetune_patience": at_least_one_or_none,
        "mixup": non_negative,
        "cutmix": non_negative,
    }
    for name, (valid, expected) in rules.items():
        if not valid(options[name]):
            raise TLBenchError(f"--model.{name} {options[name]} is invalid: use {expected}")


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > 2:
        k = min(5, num_classes - 1)
        metrics[f"top{k}_acc"] = MulticlassAccuracy(num_classes, top_k=k, average="micro")
    return MetricCollection(metrics, prefix=prefix)


class TransferLearningModule(Network, pl.LightningModule):
    """A ``Network`` (backbone and head) with its training recipe: the two phases, their optimizers, schedules,
    metrics and callbacks. Its state dict is the network's, so inference loads a checkpoint into a plain
    ``Network`` without Lightning."""

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        input_size: int | None = None,
        head_hidden: int = 1024,
        head_dropout: float = 0.5,
        head_epochs: int = 10,
        finetune_epochs: int | None = None,
        budget: Budget = "default",
        unfreeze_blocks: int = 5,
        train_bn: bool = False,
        head_optimizer: OptimizerName = "adamw",
        head_lr: float = 1e-3,
        finetune_optimizer: OptimizerName = "adamw",
        finetune_lr: float = 3e-4,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        label_smoothing: float = 0.1,
        class_weights: Literal["none", "balanced"] = "none",
        layer_decay: float | None = 0.8,
        decay_norms_and_biases: bool = True,
        warmup_epochs: float = 1,
        head_warmup_epochs: float = 0,
        head_patience: int | None = None,
        finetune_patience: int | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        cache_features: bool = True,
        cached_views: int = 1,
        channels_last: bool = True,
        engine: EngineName = "auto",
        classes: list[str] | None = None,
        tta: bool = False,
        recipe: str | None = None,
    ) -> None:
        """The defaults are the recipe the recipe grid chose (docs/results.md; the same settings as
        configs/models/efficientnet_lite2.yaml, tested; candidate "deep5"): EfficientNet-Lite2, 10 head epochs, then
        the top 5 of its 8 block groups fine-tuned with AdamW at 3e-4 for the head, layer decay 0.8 per group below
        it, a one-epoch warmup, cosine decay and label smoothing 0.1, for as many epochs as the budget rule gives
        the training split (``finetune_epochs_for``: 5 on 900 images). Early stopping is an option.

        Args:
            backbone: timm model name (vgg16, xception, resnet50, efficientnet_lite0, ...), optionally with a pretrained
                tag (resnet50.a1_in1k), an hf-hub:ORG/REPO or local-dir:FOLDER id, or cnn6/cnn1.
            pretrained: start from ImageNet weights (embedded for efficientnet_lite0/1/2, else the timm hub).
            weights: a local .pth/.safetensors file with backbone weights; wins over ``pretrained``.
            input_size: override the backbone's native input resolution (pixels).
            head_hidden: width of the head's hidden layer; 0 for a linear head.
            head_dropout: dropout before the head's last layer.
            head_epochs: epochs training the head on the frozen backbone; 0 skips the phase.
            finetune_epochs: epochs fine-tuning the top blocks; 0 gives a head-only (linear-probe style) run; None
                lets ``budget`` choose them from the training split's size (``finetune_epochs_for``).
            budget: with ``finetune_epochs`` None, about how many training images the fine-tune phase sees: "fast"
                1,500, "default" 4,000, "thorough" 12,000 (``FINETUNE_BUDGETS``), i.e. that many divided by the
                training images, in epochs (2 to 30); fit time grows with it (docs/training.md "Time budgets").
            unfreeze_blocks: top blocks (timm's block grouping) trained while fine-tuning; -1 for all.
            train_bn: let BatchNorm layers of unfrozen blocks update their statistics while fine-tuning;
                off by default because small batches of a few hundred images give noisy statistics.
            head_optimizer: optimizer of the head phase.
            head_lr: learning rate of the head phase.
            finetune_optimizer: optimizer of the fine-tune phase (a fresh one at the boundary).
            finetune_lr: learning rate of the fine-tune phase.
            momentum: momentum for SGD.
            weight_decay: weight decay of both phases.
            lr_schedule: per-phase learning-rate schedule, cosine decay over the phase's epochs or constant.
            label_smoothing: cross-entropy label smoothing (of the mixed targets too, with ``mixup``/``cutmix``).
            class_weights: cross-entropy class weights: "none", or "balanced" (n_images / (n_classes * n_class) from
                the training split's labels, as scikit-learn's "balanced"), so rare classes count as much as common
                ones in the loss; computed when the run starts, never stored in checkpoints.
            layer_decay: layer-wise learning-rate decay while fine-tuning, over timm's block groups: the head gets
                ``finetune_lr``, the top unfrozen group ``finetune_lr * layer_decay``, the next one
                ``finetune_lr * layer_decay**2``, ...; None gives every trained parameter ``finetune_lr``.
            decay_norms_and_biases: apply ``weight_decay`` to every parameter (default, as before); False applies it
                to weights of dim >= 2 only, none to norm scales and biases (timm's and most recipes' convention).
            warmup_epochs: epochs (fractions allowed) of linear learning-rate warmup at the start of the fine-tune
                phase, before the ``lr_schedule``, batch by batch from near zero to ``finetune_lr``.
            head_warmup_epochs: the same for the head phase.
            head_patience: end the head phase once val_loss has not improved for this many epochs of the phase;
                fine-tuning then starts at the next epoch and keeps its ``finetune_epochs``. None: never early.
            finetune_patience: end the fine-tune phase, and so the fit, once val_loss has not improved for this
                many epochs of the phase. None: never early.
            mixup: timm Mixup alpha for training batches (0 = off). While the head trains on cached pooled
                features it mixes those feature vectors (and their targets) instead of the images.
            cutmix: timm CutMix alpha for training image batches (0 = off). Cut-and-paste needs images, so it is
                skipped while the head trains on cached pooled features (only ``mixup`` mixes there). With both on,
                each batch uses one of them (timm's switch). Train metrics of a mixed batch count the dominant
                label (the argmax of the mixed targets); a batch of odd size (at most an epoch's last) is not mixed,
                as timm's Mixup pairs each image with its mirror in the batch.
            cache_features: train the head phase on backbone features computed once, and validate fine-tuning on
                the frozen layers' activations computed once (see callbacks/feature_cache.py), instead of running
                the frozen layers every epoch.
            cached_views: feature views cached per training image: 1 = centre crop (linear-probe style, cheapest);
                K > 1 = K augmented views, epoch e training on view e % K (K backbone passes).
            channels_last: run the backbone in channels-last memory layout (faster convolutions with oneDNN on
                CPU and with tensor cores on GPU; results equal up to float rounding).
            engine: what runs the passes that need no gradient: the frozen backbone of the head phase (feature
                caching, or every batch without it), and while fine-tuning the frozen layers below the trained
                blocks (every training batch, validation, test). "onnxruntime" exports them to ONNX Runtime (about
                3x torch's speed on a CPU), checked against torch on the first real batch, falling back to torch
                with a warning; "torch" runs everything in torch as before; "auto" (default) is ONNX Runtime on a
                CPU and torch on a GPU or under DDP. metrics.json records the engine used (``engine``).
            classes: class names in label order; filled in from the data at fit time and stored with the model.
            tta: also test with test-time augmentation (mean softmax of the centre crop and its horizontal
                flip), reported separately as ``tta`` beside, never instead of, the plain test metrics.
            recipe: the name of the settings this run uses (configs/recipes/<name>.yaml sets it), recorded in
                metrics.json; ``report`` compares runs by it (default: the backbone name).
        """
        epochs = (head_epochs, 1 if finetune_epochs is None else finetune_epochs)  # None: at least 2, by the rule
        if min(epochs) < 0 or sum(epochs) == 0:
            raise ValueError("head_epochs and finetune_epochs must be >= 0 and not both 0")
        check_recipe_options(locals())
        # The head comes last (``set_classes``), once the phase and metrics it needs exist.
        super().__init__(backbone, pretrained, weights, input_size, head_hidden, head_dropout, None, channels_last)
        self.save_hyperparameters()
        self.phase: Phase = "head" if head_epochs > 0 else "finetune"
        # The first fine-tune epoch: ``head_epochs`` unless ``head_patience`` ends the head phase earlier. The one
        # source of truth for the phase boundary (PhaseSchedule, FeatureCaching, PhaseCheckpoint), kept in checkpoints.
        self.finetune_start = head_epochs
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.test_outputs: list[dict[str, torch.Tensor]] = []
        self.batch_inputs: dict[str, BatchInputs] = {}
        # ONNX Runtime engines of the frozen backbone (key None) and of frozen trunks (key: depth), built on first
        # use; and per purpose ("features", "trunk") the engine that last ran, recorded in metrics.json.
        self._engines: dict[int | None, Engine] = {}
        self.engines_used: dict[str, str] = {}
        self._trunk_depth: int | None = None
        if classes:
            self.set_classes(classes)

    # -- construction -------------------------------------------------------------------------------------------
    def set_classes(self, classes: list[str]) -> None:
        """Build the head and metrics for ``classes``; called once the data is known."""
        self.hparams.classes = list(classes)
        self.build_head(classes)
        self.train_metrics = classification_metrics(len(classes), "train_")
        self.val_metrics = classification_metrics(len(classes), "val_")
        self.test_metrics = classification_metrics(len(classes), "test_")
        self.apply_phase(self.phase)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if self.head is None:
            datamodule.prepare_split()
            self.set_classes(datamodule.classes)
        if self.hparams.class_weights == "balanced" and stage != "predict":
            self.set_class_weights(datamodule.train_class_counts())

    def set_class_weights(self, counts: list[int]) -> None:
        """Weigh each class's loss by ``n_images / (n_classes * n_class)`` for per-class training ``counts``
        (a class without training images gets weight 0). The weights are data, not learned state: kept out of
        the state dict, so checkpoints load the same with and without them."""
        counts = torch.tensor(counts, dtype=torch.float32)
        weights = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp(min=1)), 0.0)
        self.loss_fn.register_buffer("weight", weights.to(self.device), persistent=False)

    def plan_finetune(self, train_images: int) -> int:
        """Fix ``finetune_epochs`` once the training split's size is known: the budget rule's choice when it was left
        to the rule (None), kept in the hyperparameters and so in every checkpoint. Returns the epochs."""
        if self.hparams.finetune_epochs is None:
            self.hparams.finetune_epochs = finetune_epochs_for(train_images, self.hparams.budget)
        return self.hparams.finetune_epochs

    @property
    def total_epochs(self) -> int:
        if self.hparams.finetune_epochs is None:
            raise RuntimeError("finetune_epochs is chosen by the budget rule once the data is known: plan_finetune()")
        return self.hparams.head_epochs + self.hparams.finetune_epochs

    # -- phases -------------------------------------------------------------------------------------------------
    def apply_phase(self, phase: Phase) -> None:
        """Set which parameters train in ``phase`` and put frozen BatchNorm layers in eval mode."""
        self.phase = phase
        self._trunk_depth = None
        trainable = set(self.backbone.top_blocks(self.hparams.unfreeze_blocks)) if phase == "finetune" else set()
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(parameter in trainable)
        if self.head is not None:
            self.head.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferLearningModule":
        """Lightning calls ``train()`` every epoch; frozen layers must not drift back into training mode."""
        super().train(mode)
        if mode:
            if self.phase == "head":
                self.backbone.eval()
            else:
                for module in self.backbone.modules():
                    if isinstance(module, _BatchNorm):
                        params = list(module.parameters(recurse=False))
                        trainable = bool(params) and all(p.requires_grad for p in params)
                        module.train(self.hparams.train_bn and trainable)
        return self

    def frozen_trunk_depth(self) -> int:
        """How many leading layers of the backbone's ``layer_chain()`` fine-tuning leaves frozen; 0 when the
        backbone is not a verified chain or its first layer trains."""
        chain = self.backbone.layer_chain()
        if chain is None:
            return 0
        trainable = {id(p) for p in self.backbone.top_blocks(self.hparams.unfreeze_blocks)}
        return next(
            (depth for depth, layer in enumerate(chain) if any(id(p) in trainable for p in layer.parameters())),
            len(chain),
        )

    def set_batch_inputs(self, stage: str, inputs: BatchInputs) -> None:
        """Declare what the batches of ``stage`` ("train", "val") hold from now on; "images" unless told otherwise.
        ``FeatureCaching`` calls it whenever it hands a loader cached inputs instead of images."""
        self.batch_inputs[stage] = inputs

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tlbench_phase"] = self.phase
        checkpoint["tlbench_finetune_start"] = self.finetune_start
        checkpoint["tlbench_preprocessing"] = self.preprocessing.to_dict()
        checkpoint["tlbench_weights"] = self.weights_source

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        classes = checkpoint.get("hyper_parameters", {}).get("classes")
        if self.head is None and classes:
            self.set_classes(classes)
        self.apply_phase(checkpoint.get("tlbench_phase", self.phase))
        self.finetune_start = checkpoint.get("tlbench_finetune_start", self.finetune_start)

    # -- forward and steps ----------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of ``uint8`` or normalised float images; no autograd graph while the whole
        backbone is frozen. Frozen parts run through the ``engine``: the whole backbone while it is frozen, else
        the frozen layers below the trained blocks, whose activations the trained top takes in torch."""
        if self.backbone_frozen():
            return self._frozen("features", None, images)
        depth = self._frozen_trunk()
        if depth and self.engine_name() == "onnxruntime":
            activations = self._frozen("trunk", depth, images)
            return self.backbone.forward_from(self._network_input(activations), depth)
        return self.backbone(self._network_input(images))

    def encode_until(self, images: torch.Tensor, depth: int) -> torch.Tensor:
        """Activations after the first ``depth`` layers (frozen ones: no autograd graph), through the ``engine``."""
        return self._frozen("trunk", depth, images)

    def engine_name(self) -> str:
        """The engine the frozen passes use here: ``engine`` resolved for this device (see ``resolve_engine``)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return resolve_engine(self.hparams.engine, self.device, distributed and torch.distributed.get_world_size() > 1)

    def _frozen_trunk(self) -> int:
        """``frozen_trunk_depth()``, remembered until the phase changes (it is asked on every training batch)."""
        if self._trunk_depth is None:
            self._trunk_depth = self.frozen_trunk_depth()
        return self._trunk_depth

    def _frozen(self, purpose: str, depth: int | None, images: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's pooled features (``depth`` None) or activations after its first ``depth`` layers,
        by the engine chosen for this device; records the engine used under ``purpose``."""

        def reference(inputs: torch.Tensor) -> torch.Tensor:
            inputs = self._network_input(inputs)
            with torch.no_grad():
                return self.backbone(inputs) if depth is None else self.backbone.forward_until(inputs, depth)

        if self.engine_name() == "torch":
            self.engines_used[purpose] = "torch"
            return reference(images)
        engine = self._engines.get(depth)
        if engine is None:
            network = self.backbone if depth is None else nn.Sequential(*self.backbone.layer_chain()[:depth])
            label = "frozen backbone" if depth is None else f"frozen layers below layer {depth}"
            split = "pooled" if depth is None else f"trunk{depth}"
            engine = self._engines[depth] = Engine(network, reference, "onnxruntime", self.device, label, split)
        inputs = self.preprocessing.normalize(images) if images.dtype == torch.uint8 else images
        outputs = engine(inputs)
        self.engines_used[purpose] = engine.name
        return outputs

    def __getstate__(self) -> dict:
        """Pickling (DDP spawn, deep copies) leaves the ONNX Runtime sessions behind; they are rebuilt on use."""
        return {**super().__getstate__(), "_engines": {}}

    def _logits(self, inputs: torch.Tensor, stage: str) -> torch.Tensor:
        """Logits of a ``stage`` batch, from whatever ``set_batch_inputs`` declared its inputs to be."""
        kind = self.batch_inputs.get(stage, "images")
        if kind == "images":
            return self(inputs)
        if kind == "pooled":
            return self.head(inputs)
        return self.head(self.backbone.forward_from(self._network_input(inputs), kind))

    def _mixed(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch mixed as ``mixup``/``cutmix`` ask (see their docstrings), with class-probability targets;
        unchanged when nothing mixes it. The mixer does no label smoothing: ``loss_fn`` smooths the probabilities,
        which gives timm's smoothed mixed targets exactly."""
        hp = self.hparams
        images = self.batch_inputs.get("train", "images") == "images"
        mixup = hp.mixup
        cutmix = hp.cutmix if images else 0.0
        if (mixup == 0 and cutmix == 0) or len(targets) % 2:
            return inputs, targets
        mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.0, num_classes=len(self.classes))
        return mixer(self._network_input(inputs) if images else inputs.clone(), targets)

    def _shared_step(self, batch, metrics: MetricCollection, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch[0], batch[1]
        loss_targets = targets
        if stage == "train":
            inputs, loss_targets = self._mixed(inputs, targets)
            if loss_targets.ndim == 2:
                targets = loss_targets.argmax(dim=1)
        logits = self._logits(inputs, stage)
        loss = self.loss_fn(logits, loss_targets)
        if not torch.isfinite(loss):
            raise TLBenchError(
                f"training diverged: {stage} loss is {loss.item()} at epoch {self.current_epoch},"
                f" step {self.global_step};"
                " lower --model.head_lr / --model.finetune_lr (last.ckpt holds the last finite state)"
            )
        metrics.update(logits, targets)
        self.log(
            f"{stage}_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "train",
            batch_size=len(targets),
            sync_dist=True,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", sync_dist=True)
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, self.train_metrics, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, self.val_metrics, "val")

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def test_step(self, batch, batch_idx: int) -> None:
        _, logits = self._shared_step(batch, self.test_metrics, "test")
        outputs = {"probs": logits.softmax(dim=1).float(), "targets": batch[1], "rows": batch[2]}
        if self.hparams.tta:
            outputs["tta_probs"] = (outputs["probs"] + self(batch[0].flip(dims=[3])).softmax(dim=1).float()) / 2
        self.test_outputs.append(outputs)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """``tlbench predict``: class probabilities and row indices of the images ``predict_dataloader``
        serves (``--data.predict_dir`` or the test split); ``PredictionCSVWriter`` writes them out."""
        return {"probs": self(batch[0]).softmax(dim=1).float(), "rows": batch[2]}

    def gathered_test_outputs(self) -> dict[str, torch.Tensor]:
        """Test probabilities, targets and row indices from every process, each row once (samplers pad under DDP)."""
        local = {key: torch.cat([out[key] for out in self.test_outputs]) for key in self.test_outputs[0]}
        if self.trainer.world_size > 1:
            local = {
                key: value.reshape(-1, value.shape[-1]) if key.endswith("probs") else value.flatten()
                for key, value in self.all_gather(local).items()
            }
        order = torch.argsort(local["rows"])
        rows = local["rows"][order]
        keep = torch.ones_like(rows, dtype=torch.bool)
        keep[1:] = rows[1:] != rows[:-1]
        return {key: value[order][keep] for key, value in local.items()}

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of the current phase, over the parameters that phase trains. Each group's ``peak_lr`` is
        its rate; ``PhaseLearningRate`` sets the rate of every batch from it (warmup, ``lr_schedule``)."""
        hp = self.hparams
        head = self.phase == "head"
        name, lr = (hp.head_optimizer, hp.head_lr) if head else (hp.finetune_optimizer, hp.finetune_lr)
        groups = [{**group, "peak_lr": group["lr"]} for group in self.parameter_groups(lr)]
        return build_optimizer(name, groups, lr, hp.momentum, hp.weight_decay)

    def parameter_groups(self, lr: float) -> list[dict]:
        """The current phase's trainable parameters as optimizer groups. With ``layer_decay`` while fine-tuning, the
        head gets ``lr`` and the d-th block group from the top ``lr * layer_decay**d``; without, one group at ``lr``.
        With ``decay_norms_and_biases`` off, each group is split in two, 1-d parameters (norm scales, biases) without
        weight decay: timm's rule (``param_groups_weight_decay``).

        The groups come from ``backbone.block_groups()`` rather than timm's ``param_groups_layer_decay``: that helper
        needs the timm model's fine-grained ``group_matcher`` on the module it is given, but here the timm model is
        wrapped (``FeatureExtractor``), the head lives outside it, and ``unfreeze_blocks`` counts timm's *coarse*
        groups, so the decay must step per coarse group for "the top unfrozen group gets lr * decay" to hold."""
        hp = self.hparams
        if self.phase == "finetune" and hp.layer_decay is not None:
            groups = reversed(self.backbone.block_groups())
            scaled = [(self.head.parameters(), 1.0)]
            scaled += [(group, hp.layer_decay**depth) for depth, group in enumerate(groups, start=1)]
        else:
            scaled = [(self.parameters(), 1.0)]
        result = []
        for params, scale in scaled:
            trainable = [p for p in params if p.requires_grad]
            parts = [(trainable, hp.weight_decay)]
            if not hp.decay_norms_and_biases:
                parts = [
                    ([p for p in trainable if p.ndim >= 2], hp.weight_decay),
                    ([p for p in trainable if p.ndim < 2], 0.0),
                ]
            result += [{"params": part, "lr": lr * scale, "weight_decay": decay} for part, decay in parts if part]
        return result

    def configure_callbacks(self) -> list[pl.Callback]:
        """The random streams, the two-phase schedule, the run recorder, feature caching (with ``cache_features``),
        the checkpoints, the writer of ``predictions_predict.csv`` (acts in ``predict`` only) and the test of each
        phase's best checkpoint after fit. Lightning adds them on every run, so a plain
        ``Trainer().fit(module, datamodule)`` runs the whole recipe."""
        from tlbench.callbacks.evaluation import TestBestPhases
        from tlbench.callbacks.feature_cache import FeatureCaching
        from tlbench.callbacks.finetuning import PhaseCheckpoint, PhaseLearningRate, PhaseSchedule
        from tlbench.callbacks.prediction_writer import PredictionCSVWriter
        from tlbench.callbacks.recorder import RunRecorder
        from tlbench.callbacks.rng_state import RandomState

        hp = self.hparams
        planned = (("head", hp.head_epochs), ("finetune", hp.finetune_epochs))
        phases = [phase for phase, epochs in planned if epochs is None or epochs > 0]  # None: >= 2 by the budget rule
        caching = [FeatureCaching(hp.cached_views)] if hp.cache_features else []
        checkpoints = [*(PhaseCheckpoint(phase) for phase in phases), PhaseCheckpoint(None)]
        # TestBestPhases last: its test after fit runs once every other callback has finished the fit.
        return [
            RandomState(),
            PhaseSchedule(),
            PhaseLearningRate(),
            RunRecorder(),
            *caching,
            *checkpoints,
            PredictionCSVWriter(),
            TestBestPhases(),
        ]
