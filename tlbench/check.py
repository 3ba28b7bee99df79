"""What does the pretrained ImageNet classifier see in my data, and what should I train?

``check_dataset`` runs the backbone with its own 1000-class ImageNet head on a few images per class, records
the top-k ImageNet labels per image, summarises per class how confident and consistent those predictions are,
and turns that into the cs231n head-only vs fine-tune advice (thresholds and their limits:
``tlbench.evaluation.domain``). Seconds on a CPU, before committing minutes to a training run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from timm.data import ImageNetInfo

from tlbench.classify import classify_paths
from tlbench.configs import read_yaml_mapping, resolve_config_path
from tlbench.data.split import make_split
from tlbench.data.transforms import Preprocessing
from tlbench.errors import TLBenchError
from tlbench.evaluation.domain import Recommendation, class_summary, recommend
from tlbench.evaluation.plots import plot_contact_sheet
from tlbench.io import write_csv
from tlbench.models.backbones import DEFAULT_BACKBONE, create_classifier
from tlbench.models.engine_name import EngineName
from tlbench.models.inference import Predictor
from tlbench.models.loading import TrainedModel
from tlbench.outputs import dataset_name, default_output

SHEET_LABELS = 3


@dataclass
class CheckResult:
    """ImageNet's predictions on the sampled images (``label`` + classify's columns), per-class summary, advice."""

    root: Path
    backbone: str
    predictions: pd.DataFrame
    summary: pd.DataFrame
    advice: Recommendation
    csv: Path
    contact_sheet: Path


def config_values(config: str) -> tuple[str | None, str | None]:
    """``data.root`` and ``model.backbone`` of a fit config, as ``fit`` would read them.

    Both config shapes are supported: a run's resolved ``config.yaml`` (nested mappings) and the shipped
    two-line configs whose ``data:``/``model:`` entries name other YAML files, resolved relative to the
    including file as jsonargparse does. Bare names (``birds_efficientnet_lite0``) resolve in ``configs/``.
    """
    path = Path(resolve_config_path(config))
    values = read_yaml_mapping(path)

    def section(name: str) -> dict:
        value = values.get(name) or {}
        return read_yaml_mapping(path.parent / value) if isinstance(value, str) else value

    return section("data").get("root"), section("model").get("backbone")


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet descriptions (offline, from timm), made unique: "crane" is a bird and a machine."""
    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    repeated = Counter(names)
    return [f"{name} #{i}" if repeated[name] > 1 else name for i, name in enumerate(names)]


def imagenet_predictor(backbone: str, engine: EngineName = "auto") -> Predictor:
    """The backbone with its ImageNet head, wrapped like a trained model so classify's batching is reused."""
    model, source = create_classifier(backbone)
    if source == "random" or getattr(model, "num_classes", 1000) != 1000:
        raise TLBenchError(
            f"check needs a backbone with ImageNet-1k weights; '{backbone}' has none ({source});"
            " pass --backbone with ImageNet weights (e.g. efficientnet_lite0)"
        )
    preprocessing = Preprocessing.from_timm_config(model.pretrained_cfg)
    trained = TrainedModel(model.eval(), imagenet_labels(), preprocessing, backbone, "imagenet", Path(source))
    return Predictor(trained, engine=engine)


def sample_images(table: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """``per_class`` images of every class (all it has if fewer), the same ones for the same seed."""
    groups = [
        group.sample(n=min(per_class, len(group)), random_state=seed) for _, group in table.groupby("label", sort=True)
    ]
    return pd.concat(groups, ignore_index=True)


def format_labels(row: Mapping, top_k: int, separator: str = "  ", width: int | None = None) -> str:
    """``label prob`` for the top ``top_k`` ImageNet labels of one row of ``check.csv``."""
    return separator.join(f"{row[f'top{r}_label'][:width]} {row[f'top{r}_prob']:.2f}" for r in range(1, top_k + 1))


def check_dataset(
    config: str | None = None,
    data_root: str | None = None,
    backbone: str | None = None,
    per_class: int = 2,
    top_k: int = 5,
    output: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    engine: EngineName = "auto",
) -> CheckResult:
    """ImageNet's predictions on ``per_class`` images per class, their per-class summary and the training advice.

    Writes ``check.csv`` (one row per image: class, path, top-k ImageNet labels and probabilities) and
    ``contact_sheet.png`` (thumbnails with their top-3 labels) to ``output`` (default
    ``lightning_logs/check/<dataset>_<backbone>/``).

    Args:
        config: a fit config (shipped name or a run's config.yaml); its data root and backbone are the defaults.
        data_root: the data folder (class folders, or train/val[/test]); wins over the config's.
        backbone: timm backbone with ImageNet weights; wins over the config's (default: efficientnet_lite2).
        per_class: images looked at per class.
        top_k: ImageNet labels listed per image.
        output: folder for check.csv and contact_sheet.png.
        seed: which images are sampled.
        progress: show a progress bar on stderr while classifying.
        engine: auto (ONNX Runtime on a CPU, torch on a GPU), torch or onnxruntime.
    """
    config_root, config_backbone = config_values(config) if config else (None, None)
    root = data_root or config_root
    if root is None:
        named = f"{config} names no data.root" if config else "no data folder"
        raise TLBenchError(f"{named}: pass --data.root DIR or a --config that names one")
    if per_class < 1 or not 1 <= top_k <= 1000:
        raise TLBenchError(
            f"--per_class {per_class} and --top_k {top_k}: pass --per_class 1 or more and --top_k from 1 to 1000"
        )
    table = make_split(root)
    backbone = backbone or config_backbone or DEFAULT_BACKBONE
    predictor = imagenet_predictor(backbone, engine)
    sample = sample_images(table, per_class, seed)
    predictions = classify_paths(predictor, [Path(root) / path for path in sample.path], top_k, progress)
    results = pd.concat([sample[["label"]], predictions], axis=1)
    unreadable = results[results.error != ""]
    if len(unreadable) == len(results):
        example = f"{unreadable.path.iloc[0]}: {unreadable.error.iloc[0]}"
        raise TLBenchError(
            f"none of the {len(results)} sampled images could be read (e.g. {example}); run 'tlbench data audit {root}'"
        )
    summary = class_summary(results)
    train_per_class = float(table[table.split == "train"].label.value_counts().median())
    out = Path(output) if output else default_output("check", f"{dataset_name(root)}_{backbone}")
    csv = write_csv(out / "check.csv", results)
    captions = [
        format_labels(row, min(SHEET_LABELS, top_k), "\n", 28) if not row["error"] else row["error"]
        for _, row in results.iterrows()
    ]
    sheet = plot_contact_sheet(
        [Path(p) for p in results.path], list(results.label), captions, out / "contact_sheet.png"
    )
    return CheckResult(Path(root), backbone, results, summary, recommend(summary, train_per_class), csv, sheet)
