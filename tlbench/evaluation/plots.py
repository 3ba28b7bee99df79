"""Evaluation plots as PNG files: confusion matrix, reliability diagram, learning curves, top losses, Grad-CAM
overlays.

Figures are built on ``matplotlib.figure.Figure`` and rendered by the Agg canvas, never through ``pyplot``:
no global figure registry to leak memory across runs, no display backend needed on a headless server.
Every function writes its PNG atomically (see ``tlbench.io.atomic_path``) and returns the path it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tlbench.data.images import ImageLoadError, load_rgb
from tlbench.io import atomic_path

THUMBNAIL_SIZE = (256, 256)
DPI = 120
# Heatmap overlays from image files (None for a file that does not decode), e.g. ``models.gradcam.Explainer.overlays``.
Overlays = Callable[[list[Path]], list["np.ndarray | None"]]
HEATMAP_ALPHA = 0.6


def _save(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` with Agg into ``path`` atomically, its title (if any) also as the PNG's ``Title`` text, so
    a reader or a test can tell which figure a file holds without reading the pixels."""
    path = Path(path)
    FigureCanvasAgg(figure)
    metadata = {"Title": figure.get_suptitle()} if figure.get_suptitle() else None
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, metadata=metadata)
    return path


def plot_confusion_matrix(
    cm: np.ndarray, classes: list[str], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """Counts heat map (rows true, columns predicted) with each count written in its cell.

    Counts rather than row-normalised rates, because on small test sets "1 of 3" and "33%" read very
    differently; the colour scale still shows where the mass is.
    """
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} classes")
    side = max(4.0, 0.45 * n + 2.5)
    figure = Figure(figsize=(side + 1.0, side))
    ax = figure.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    font_size = max(4.0, min(10.0, 160.0 / max(n, 1)))
    threshold = cm.max() / 2 if cm.size else 0
    for (row, column), count in np.ndenumerate(cm):
        ax.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=font_size,
            color="white" if count > threshold else "black",
        )
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right", fontsize=font_size)
    ax.set_yticks(range(n), labels=classes, fontsize=font_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_reliability_diagram(bin_table: pd.DataFrame, ece: float, path: str | Path) -> Path:
    """Accuracy against confidence per bin (from ``expected_calibration_error``), with sample counts below.

    Bars below the diagonal mean over-confidence. The count panel matters: a bar far off the diagonal built
    on two images is not evidence of miscalibration.
    """
    filled = bin_table[bin_table["count"] > 0]
    widths = (filled.bin_hi - filled.bin_lo).to_numpy()
    figure = Figure(figsize=(5.0, 6.0))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(filled.bin_lo, filled.accuracy, width=widths, align="edge", edgecolor="black", label="accuracy")
    top.bar(
        filled.bin_lo,
        filled.confidence - filled.accuracy,
        bottom=filled.accuracy,
        width=widths,
        align="edge",
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"Reliability (ECE = {ece:.3f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(filled.bin_lo, filled["count"], width=widths, align="edge", edgecolor="black", color="grey")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    figure.tight_layout()
    return _save(figure, path)


LEARNING_CURVE_PANELS = {"loss": ("train_loss", "val_loss"), "accuracy": ("train_acc", "val_acc")}


def plot_learning_curves(history: pd.DataFrame, path: str | Path, boundary_epoch: float | None = None) -> Path:
    """Loss and accuracy per epoch for train and validation, both phases on one epoch axis.

    ``history`` has columns ``epoch, phase, train_loss, val_loss, train_acc, val_acc`` with ``epoch``
    counted across phases; missing values (a metric not logged that epoch) are skipped. Points are the raw
    logged values joined by straight lines: smoothing would invent values between epochs and hide the
    jump at the phase change that this plot exists to show. A dashed vertical line marks
    ``boundary_epoch`` (where fine-tuning starts), and each phase is named above its epochs.
    """
    history = history.sort_values("epoch")
    figure = Figure(figsize=(10.0, 4.0))
    axes = figure.subplots(1, 2)
    for ax, (quantity, columns) in zip(axes, LEARNING_CURVE_PANELS.items()):
        for column in columns:
            if column in history:
                points = history[["epoch", column]].dropna()
                ax.plot(
                    points.epoch, points[column], marker="o", markersize=3, linestyle="-", label=column.split("_")[0]
                )
        if boundary_epoch is not None:
            ax.axvline(boundary_epoch, linestyle="--", color="grey")
        for phase, rows in history.groupby("phase", sort=False):
            ax.text(
                rows.epoch.mean(),
                1.01,
                str(phase),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="dimgrey",
            )
        ax.set(xlabel="epoch", ylabel=quantity)
        ax.set_title(quantity, pad=14)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _wrong_by_confidence(table: pd.DataFrame) -> pd.DataFrame:
    """Misclassified rows, most confident first (probability given to the wrong predicted class)."""
    wrong = table[table.pred_label.astype(str) != table.true_label.astype(str)]
    confidence = [wrong.at[index, f"prob_{label}"] for index, label in wrong.pred_label.items()]
    return wrong.assign(wrong_prob=confidence).sort_values("wrong_prob", ascending=False, kind="stable")


def plot_top_losses(
    table: pd.DataFrame, data_root: str | Path, path: str | Path, n: int = 12, overlays: Overlays | None = None
) -> Path:
    """Gallery of the ``n`` most confidently wrong images, captioned ``true / predicted (p)``.

    Confident mistakes are where label errors, near-duplicate classes and shortcut features show up; a
    low-probability mistake is usually just a hard image. Paths in ``table`` are relative to ``data_root``;
    an image that no longer decodes is shown as a captioned blank rather than failing the whole report.
    With no mistakes the PNG says so, so the artefact always exists. With ``overlays`` (Grad-CAM, when it is
    installed) each image shows where the model looked for the wrong class: only these ``n`` are explained.
    """
    return _save(top_losses_figure(table, data_root, n, overlays), path)


TOP_LOSSES_TITLE = "Most confidently wrong: true / predicted (p)"
TOP_LOSSES_EXPLAINED = " with Grad-CAM of the predicted class"


def top_losses_figure(
    table: pd.DataFrame, data_root: str | Path, n: int = 12, overlays: Overlays | None = None
) -> Figure:
    """The figure of ``plot_top_losses``, at least as wide as its title: one or two 3-inch panels are narrower
    than the title, which ``tight_layout`` leaves cut off at both edges rather than widening the figure."""
    worst = _wrong_by_confidence(table).head(n)
    if worst.empty:
        figure = Figure(figsize=(4.0, 1.5))
        figure.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=12)
        return figure
    paths = [Path(data_root) / row_path for row_path in worst.path]
    shown = overlays(paths) if overlays is not None else [None] * len(paths)
    columns = min(4, len(worst))
    rows = math.ceil(len(worst) / columns)
    figure = Figure(figsize=(3.0 * columns, 3.2 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax, row, image_path, overlay in zip(axes, worst.itertuples(index=False), paths, shown):
        try:
            image = load_rgb(image_path) if overlay is None else Image.fromarray(overlay)
            image.thumbnail(THUMBNAIL_SIZE)
            ax.imshow(image)
        except ImageLoadError as error:
            ax.text(0.5, 0.5, f"unreadable:\n{error}", ha="center", va="center", fontsize=7, wrap=True)
        ax.set_title(f"{row.true_label} / {row.pred_label} ({row.wrong_prob:.2f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    explained = overlays is not None and any(overlay is not None for overlay in shown)
    title = figure.suptitle(TOP_LOSSES_TITLE + (TOP_LOSSES_EXPLAINED if explained else ""))
    title_width = title.get_window_extent(FigureCanvasAgg(figure).get_renderer()).width / figure.dpi
    figure.set_figwidth(max(figure.get_figwidth(), title_width + 0.5))
    figure.tight_layout()
    return figure


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = HEATMAP_ALPHA) -> np.ndarray:
    """``image`` (``H x W x 3`` uint8) with ``heatmap`` (``H x W``, 0..1) blended over it in the jet colours, the
    heat's own strength scaling the blend: cold regions keep the photo, hot ones turn red."""
    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]
    return (image * (1.0 - weight) + colours * weight).round().clip(0, 255).astype(np.uint8)


def plot_explanation(image: np.ndarray, overlay: np.ndarray, title: str, path: str | Path) -> Path:
    """The image and its heatmap overlay side by side under ``title`` (the predicted and true labels)."""
    height, width = image.shape[:2]
    panel = 3.2 * min(1.6, max(0.6, width / height))
    figure = Figure(figsize=(2 * panel, 3.6))
    for ax, pixels, caption in zip(figure.subplots(1, 2), (image, overlay), ("image", "Grad-CAM")):
        ax.imshow(pixels)
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_contact_sheet(
    paths: list[Path], titles: list[str], captions: list[str], path: str | Path, columns: int = 4
) -> Path:
    """Thumbnails in a grid, each with a bold ``title`` and a multi-line ``caption`` under it.

    Used by ``check`` to show what ImageNet sees in each class; an unreadable file gets a captioned blank,
    as in ``plot_top_losses``.
    """
    columns = max(1, min(columns, len(paths)))
    rows = max(1, math.ceil(len(paths) / columns))
    figure = Figure(figsize=(3.2 * columns, 3.8 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax, image_path, title, caption in zip(axes, paths, titles, captions):
        try:
            image = load_rgb(image_path)
            image.thumbnail(THUMBNAIL_SIZE)
            ax.imshow(image)
        except ImageLoadError as error:
            ax.text(0.5, 0.5, f"unreadable:\n{error}", ha="center", va="center", fontsize=7, wrap=True)
        ax.set_title(title, fontsize=9, fontweight="bold")
        ax.text(0.5, -0.03, caption, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    for ax in axes:
        ax.axis("off")
    figure.tight_layout()
    return _save(figure, path)


def plot_accuracy_bars(summary: pd.DataFrame, path: str | Path) -> Path:
    """Test accuracy per backbone, one panel per dataset, one bar per phase, with 95% interval error bars.

    ``summary`` has columns ``dataset, backbone, phase, acc_mean, acc_ci_lo, acc_ci_hi``. Error bars are
    drawn from the interval ends rather than a symmetric ± so that single-run Wilson intervals near 100% stay
    honest (they are lopsided). A backbone without a phase (cnn6 has no head phase) leaves a gap.
    """
    datasets = list(dict.fromkeys(summary.dataset))
    backbones = list(dict.fromkeys(summary.backbone))
    phases = list(dict.fromkeys(summary.phase))
    width = 0.8 / max(1, len(phases))
    figure = Figure(figsize=(max(4.0, 1.2 * len(backbones) + 1.5) * len(datasets), 4.0))
    axes = np.atleast_1d(figure.subplots(1, len(datasets), sharey=True, squeeze=False)).ravel()
    for ax, dataset in zip(axes, datasets):
        for offset, phase in enumerate(phases):
            rows = (
                summary[(summary.dataset == dataset) & (summary.phase == phase)]
                .set_index("backbone")
                .reindex(backbones)
            )
            x = np.arange(len(backbones)) + (offset - (len(phases) - 1) / 2) * width
            errors = np.vstack([rows.acc_mean - rows.acc_ci_lo, rows.acc_ci_hi - rows.acc_mean]).clip(min=0)
            ax.bar(x, rows.acc_mean, width=width, yerr=errors, capsize=3, label=phase)
        ax.set_xticks(range(len(backbones)), labels=backbones, rotation=30, ha="right")
        ax.set(title=dataset, ylim=(0, 1.05))
    axes[0].set_ylabel("test accuracy (95% interval)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def plot_time_vs_accuracy(points: pd.DataFrame, path: str | Path) -> Path:
    """Training time (log scale) against final test accuracy: one point per dataset x backbone.

    ``points`` has columns ``dataset, backbone, train_seconds, acc_mean``; colour names the backbone and the
    marker the dataset, so the cost of each backbone's accuracy reads across datasets.
    """
    markers = "osD^vP*X"
    figure = Figure(figsize=(6.5, 4.5))
    ax = figure.add_subplot()
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(points.backbone))}
    shapes = {name: markers[i % len(markers)] for i, name in enumerate(dict.fromkeys(points.dataset))}
    for row in points.itertuples(index=False):
        ax.scatter(row.train_seconds, row.acc_mean, color=colours[row.backbone], marker=shapes[row.dataset], s=50)
    handles = [ax.scatter([], [], color=colour, marker="o", label=name) for name, colour in colours.items()]
    handles += [ax.scatter([], [], color="grey", marker=shape, label=name) for name, shape in shapes.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xscale("log")
    ax.set(xlabel="training time, all phases (s, log scale)", ylabel="final test accuracy", title="Time vs accuracy")
    figure.tight_layout()
    return _save(figure, path)
