"""The Python API: train on a folder of images, load what was trained, predict.

    import tlbench
    run = tlbench.fit("path/to/images", backbone="efficientnet_lite0", head_epochs=3, finetune_epochs=1)
    print(run.metrics["phases"]["finetune"]["test_acc"], run.dir)
    model = tlbench.load(run.dir)            # run dir, checkpoint or export bundle
    print(model.predict(["a.jpg", "b.jpg"]))  # labels + probabilities
    for item in model.explain(["a.jpg"]):      # Grad-CAM heatmaps (needs tlbench[explain])
        print(item.label, item.peak)

``fit`` builds the same module, datamodule and trainer as ``tlbench fit`` and writes the same run
directory; every keyword is a ``TransferLearningModule`` or ``ImageFolderDataModule`` argument (the CLI's
``--model.*`` / ``--data.*``), and ``trainer`` takes ``pytorch_lightning.Trainer`` arguments (loggers,
callbacks, accelerator, precision...).

Only ``fit`` imports Lightning (and ``explain`` Captum and matplotlib), on first use: ``load`` and ``predict`` run a
plain network, so a script that only predicts starts seconds sooner and hundreds of MiB smaller.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from tlbench.console import quiet
from tlbench.data.images import ImageLoadError, load_rgb
from tlbench.errors import TLBenchError
from tlbench.models.backbones import DEFAULT_BACKBONE
from tlbench.models.engine_name import EngineName
from tlbench.models.inference import Predictor
from tlbench.models.loading import TrainedModel, load_trained
from tlbench.rundir import experiment_name, install_run_logger, read_metrics, run_dir

if TYPE_CHECKING:
    from tlbench.models.gradcam import Explainer, Explanation

# Trainer settings of every tlbench run, the CLI's included: log each step of small datasets, and no sanity
# validation (the head phase's first validation runs on cached features that do not exist yet).
# Lightning's model table is off: 20 lines per fit saying what the run's layout line and summary table already say
# (--trainer.enable_model_summary true brings it back).
TRAINER_DEFAULTS = {"log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_model_summary": False}


@dataclass(frozen=True)
class Run:
    """A finished run: its directory (``lightning_logs/<experiment>/version_N``) and its ``metrics.json``."""

    dir: Path

    @property
    def metrics(self) -> dict:
        return read_metrics(self.dir)


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probability: float
    probabilities: dict[str, float]


def _options_of(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keywords for the module and for the datamodule; an unknown one is one line with the closest names."""
    from tlbench.data.datamodule import ImageFolderDataModule
    from tlbench.models.module import TransferLearningModule

    model_names, data_names = _options_of(TransferLearningModule), _options_of(ImageFolderDataModule) - {"root"}
    unknown = sorted(set(options) - model_names - data_names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(model_names | data_names), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TLBenchError(
            f"tlbench.fit: unknown option {unknown[0]!r}{hint}; use an argument of TransferLearningModule or"
            " ImageFolderDataModule"
        )
    return (
        {k: v for k, v in options.items() if k in model_names},
        {k: v for k, v in options.items() if k in data_names},
    )


def fit(
    data: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    output: str | Path = ".",
    experiment: str | None = None,
    seed: int = 0,
    trainer: dict[str, Any] | None = None,
    **options: Any,
) -> Run:
    """Train head then fine-tune on the images under ``data``, test each phase's best checkpoint, and return the run.

    Args:
        data: a folder of class folders, or of ``train/ val/ [test/]`` folders.
        backbone: any timm model name (or ``cnn6``/``cnn1``); default: the recipe grid's (efficientnet_lite2).
        output: where ``lightning_logs/`` and ``checkpoints/`` go.
        experiment: run name (default ``<data folder>_<backbone>``).
        seed: seeds the training randomness (``seed_everything``), as ``--seed_everything`` does; the split has
            its own ``split_seed``.
        trainer: extra ``pytorch_lightning.Trainer`` arguments.
        **options: ``TransferLearningModule`` / ``ImageFolderDataModule`` arguments
            (``head_epochs=3``, ``batch_size=16``).
    """
    import pytorch_lightning as pl

    from tlbench.data.datamodule import ImageFolderDataModule
    from tlbench.models.module import TransferLearningModule

    model_options, data_options = _split_options(options)
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = ImageFolderDataModule(str(data), **data_options)
    module = TransferLearningModule(backbone=backbone, **model_options)
    # max_epochs is left to the module's schedule (PhaseSchedule), which may need the data to fix it.
    settings = {**TRAINER_DEFAULTS, "default_root_dir": str(output), **(trainer or {})}
    lightning = pl.Trainer(**settings)
    install_run_logger(lightning, experiment or experiment_name(datamodule.dataset_name, backbone))
    try:
        with quiet():  # the CLI's console: no dependency deprecations, no tips, tlbench's warnings in one line
            lightning.fit(module, datamodule)
    except SystemExit:  # Lightning's exit(1) after a Ctrl-C would end a notebook's kernel: raise the interrupt instead
        if lightning.interrupted:
            raise KeyboardInterrupt from None
        raise
    return Run(run_dir(lightning).resolve())


class Model:
    """A trained model ready for inference, with its classes and its training-time preprocessing; ``engine`` runs
    it (auto: ONNX Runtime on a CPU, torch on a GPU; see ``Predictor``)."""

    def __init__(self, trained: TrainedModel, batch_size: int = 32, engine: EngineName = "auto") -> None:
        self.trained = trained
        self.predictor = Predictor(trained, batch_size, engine)
        self._explainer: Explainer | None = None

    @property
    def classes(self) -> list[str]:
        return self.trained.classes

    def predict(self, images: list[str | Path | Image.Image]) -> list[Prediction]:
        """The most probable class and every class probability of each image (files or PIL images)."""
        loaded, names = [], []
        for image in images:
            if isinstance(image, Image.Image):
                loaded.append(image.convert("RGB"))
                names.append("<image>")
                continue
            try:
                loaded.append(load_rgb(image))
            except ImageLoadError as error:
                raise TLBenchError(f"{image}: {error}; pass image files") from None
            names.append(str(image))
        probabilities = self.predictor.probabilities(loaded)
        results = []
        for name, row in zip(names, probabilities.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            results.append(Prediction(name, self.classes[best], row[best], dict(zip(self.classes, row))))
        return results

    def explain(self, images: list[str | Path | Image.Image], batch_size: int = 16) -> list[Explanation]:
        """Grad-CAM of each image's predicted class: label, probability, ``heatmap`` over the original image
        (0..1), ``peak`` and ``overlay()``. Runs in torch whatever ``engine`` predicts (it needs gradients); the
        images are held in memory, so pass a few at a time (``tlbench explain`` streams a folder to PNGs)."""
        from tlbench.explain import load_images
        from tlbench.models.gradcam import Explainer

        if self._explainer is None:
            self._explainer = Explainer.of(self.trained.model)
        paths = [image for image in images if not isinstance(image, Image.Image)]
        loaded = iter(load_images([Path(path).expanduser() for path in paths]))
        pictures = [image.convert("RGB") if isinstance(image, Image.Image) else next(loaded) for image in images]
        names = ["<image>" if isinstance(image, Image.Image) else str(image) for image in images]
        return self._explainer.explain(pictures, names, batch_size)


def load(path: str | Path, phase: str | None = None, engine: EngineName = "auto") -> Model:
    """A model from a run directory, a ``.ckpt`` file or an export bundle (``phase`` picks a run's phase), run by
    ``engine`` (auto, torch or onnxruntime)."""
    return Model(load_trained(path, phase), engine=engine)
