"""Figures keep their text inside the canvas, however few panels they have."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tlbench.evaluation import plots


def wrong_predictions(root: Path, wrong: int) -> pd.DataFrame:
    """``wrong`` confidently misclassified images (real PNGs under ``root``) and one correct one."""
    rows = []
    for i in range(wrong + 1):
        path = f"cat/img_{i}.png"
        (root / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 40, 40)).save(root / path)
        predicted = "cat" if i == wrong else "dog"
        rows.append(
            {
                "path": path,
                "true_label": "cat",
                "pred_label": predicted,
                "prob_cat": 0.9 if predicted == "cat" else 0.2,
                "prob_dog": 0.1 if predicted == "cat" else 0.8,
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("wrong", [1, 2, 5])
def test_top_losses_title_is_inside_the_figure(tmp_path, wrong):
    figure = plots.top_losses_figure(wrong_predictions(tmp_path, wrong), tmp_path)
    figure.savefig(tmp_path / "top.png")  # draws with the final layout
    title = next(text for text in figure.texts if text.get_text() == plots.TOP_LOSSES_TITLE).get_window_extent()
    inside = figure.bbox
    assert inside.x0 <= title.x0 and title.x1 <= inside.x1 and inside.y0 <= title.y0 and title.y1 <= inside.y1
    assert len([ax for ax in figure.axes if ax.get_images()]) == wrong
