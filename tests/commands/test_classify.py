"""``python -m tlbench classify``: a trained leaves3 model on held-out photos, folders and bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA, make_image, run_cli
from tlbench.commands.classify import classify
from tlbench.errors import TLBenchError


@pytest.fixture(scope="module")
def leaves_run(tmp_path_factory) -> Path:
    """efficientnet_lite0 head-only, 2 epochs on the real leaves3 data (about 15 s): its run directory."""
    if not (SHARED_DATA / "leaves3").is_dir():
        pytest.skip("../shared/data/leaves3 is not present")
    cwd = tmp_path_factory.mktemp("leaves")
    result = run_cli(
        "fit",
        "--config",
        "leaves_efficientnet_lite0.yaml",
        "--data.root",
        str(SHARED_DATA / "leaves3"),
        "--model.finetune_epochs",
        "0",
        "--model.head_epochs",
        "2",
        "--data.num_workers",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "lightning_logs" / "leaves3_efficientnet_lite0" / "version_0"


def test_classify_held_out_images_matches_the_runs_own_test_predictions(leaves_run, tmp_path):
    predictions = pd.read_csv(leaves_run / "predictions_head.csv")
    images = [str(SHARED_DATA / "leaves3" / path) for path in predictions.path]
    result = run_cli("classify", str(leaves_run), *images, "--top_k", "2", "--output", "preds.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "preds.csv")
    assert list(table.columns) == ["path", "top1_label", "top1_prob", "top2_label", "top2_prob", "error"]
    assert table.top1_label.tolist() == predictions.pred_label.tolist()
    assert table.top1_prob.to_numpy() == pytest.approx(predictions.top1_prob.to_numpy(), abs=1e-4)
    assert (table.top1_label == predictions.true_label).any(), "a held-out test image must get its true class"
    assert Path(images[0]).name in result.stdout and predictions.pred_label[0] in result.stdout


def test_classify_folders_mixed_formats_and_bad_files_from_a_checkpoint(leaves_run, tmp_path):
    metrics = json.loads((leaves_run / "metrics.json").read_text())
    photo = SHARED_DATA / "leaves3" / pd.read_csv(leaves_run / "predictions_head.csv").path[0]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(photo, folder / "sub" / "photo.JPG")
    make_image(folder / "patch.png", (200, 30, 30), seed=1)
    make_image(folder / "patch.webp", (30, 30, 200), seed=2)
    make_image(folder / ".hidden.png", (30, 200, 30), seed=3)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    result = run_cli(
        "classify", metrics["phases"]["head"]["best_ckpt"], "in", "broken.jpg", "--output", "out.csv", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert sorted(Path(p).name for p in table.path) == ["broken.jpg", "patch.png", "patch.webp", "photo.JPG"]
    errors = dict(zip((Path(p).name for p in table.path), table.error))
    assert errors["broken.jpg"] and not errors["photo.JPG"] and not errors["patch.webp"]
    assert set(table.top1_label) - {""} <= set(metrics["classes"])
    assert "1 file(s) could not be classified" in result.stdout


def test_classify_without_images_names_the_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TLBenchError, match="no image files in .*empty"):
        classify(str(tmp_path / "no_run"), [str(tmp_path / "empty")])


def test_classify_bar_on_stderr_only_when_asked(leaves_run, tmp_path):
    images = [str(path) for path in sorted((SHARED_DATA / "leaves3").glob("*/*"))[:3]]
    quiet = run_cli("classify", str(leaves_run), *images, cwd=tmp_path)
    assert quiet.returncode == 0 and "classifying" not in quiet.stderr
    shown = run_cli("classify", str(leaves_run), *images, "--progress", "true", cwd=tmp_path)
    assert shown.returncode == 0 and "classifying: 100%" in shown.stderr and "3/3" in shown.stderr
