"""``python -m tlbench predict`` writes ``predictions_predict.csv``: for a folder of images or the test split."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import copy_run, make_image, run_cli

CLASSES = ["class_0", "class_1", "class_2"]


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny run, with its own directory for the predictions to land in."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("predict"))


def predict(run: Path, ckpt: Path, *extra: str):
    args = ["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt), *extra]
    return run_cli(*args, cwd=run.parents[2])


def written_csv(stdout: str) -> Path:
    match = re.search(r"wrote (\S+predictions_predict\.csv) \((\d+) image\(s\)\)", stdout)
    assert match, stdout[-2000:]
    return Path(match.group(1))


def best_checkpoint(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["phases"]["finetune"]["best_ckpt"])


def test_predict_dir_writes_every_image_beside_the_checkpoints_run(trained, tmp_path):
    folder = tmp_path / "new_photos"
    images = [make_image(folder / "a.png", (220, 40, 40), seed=1)]
    images.append(make_image(folder / "sub" / "b.jpg", (40, 60, 220), seed=2))  # folders are searched recursively
    (folder / "notes.txt").write_text("not a picture")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / ".DS_Store").write_bytes(b"\0")
    result = predict(trained, best_checkpoint(trained), "--data.predict_dir", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert written_csv(result.stdout) == trained / "predictions_predict.csv"
    assert "notes.txt: skipped" in result.stderr and "broken.jpg: skipped" in result.stderr
    assert ".DS_Store" not in result.stderr
    table = pd.read_csv(trained / "predictions_predict.csv")
    assert table.path.tolist() == [str(path.resolve()) for path in images]
    assert "true_label" not in table and set(table.pred_label) <= set(CLASSES)
    assert (table.pred_label == table.top1_label).all()
    probs = table[[f"prob_{name}" for name in CLASSES]]
    assert ((probs.sum(axis=1) - 1).abs() < 1e-5).all()
    assert (probs.max(axis=1) - table.top1_prob).abs().max() < 1e-6


def test_predict_without_a_folder_repeats_the_test_and_writes_to_its_own_log_dir(trained, tmp_path):
    """A checkpoint outside ``checkpoints/<exp>/version_N`` has no run: the CSV goes to predict's own log directory."""
    elsewhere = shutil.copy(best_checkpoint(trained), tmp_path / "model.ckpt")
    result = predict(trained, elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    path = written_csv(result.stdout)
    assert path.parent.parent == trained.parent and path.parent != trained
    table = pd.read_csv(path)
    tested = pd.read_csv(trained / "predictions_finetune.csv")
    assert table.columns.tolist() == tested.columns.tolist()
    assert table.path.tolist() == tested.path.tolist() and (table.split == "test").all()
    assert table.true_label.tolist() == tested.true_label.tolist() and set(table.pred_label) <= set(CLASSES)
    probs = [f"prob_{name}" for name in CLASSES]
    assert (table[probs] - tested[probs]).abs().max().max() < 1e-5


def test_predict_dir_without_images_fails_in_one_line(trained, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("no images here")
    result = predict(trained, best_checkpoint(trained), "--data.predict_dir", str(tmp_path / "empty"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds no usable image" in result.stderr.strip().splitlines()[-1]
