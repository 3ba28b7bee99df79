"""CSV cells a spreadsheet would run as formulas are written with a leading quote and read back unchanged."""

from __future__ import annotations

import json

import pandas as pd

from tests.conftest import TINY_FIT_ARGS, make_dataset, run_cli
from tlbench.data.split import read_split
from tlbench.io import neutralise_csv_cell, read_csv, restore_csv_cell, write_csv


def test_formula_cells_are_quoted_and_numbers_untouched(tmp_path):
    names = ["=cmd.png", "-x.png", "+1.png", "@a.png", "\tt.png", "\rr.png", "'=q.png", "plain.png", "'quoted"]
    assert [restore_csv_cell(neutralise_csv_cell(name)) for name in names] == names
    table = pd.DataFrame({"path": [name for name in names if "\r" not in name], "score": -0.5})
    written = write_csv(tmp_path / "t.csv", table)
    raw = pd.read_csv(written, dtype=str, keep_default_na=False)
    assert raw.path.tolist()[:4] == ["'=cmd.png", "'-x.png", "'+1.png", "'@a.png"] and set(raw.score) == {"-0.5"}
    pd.testing.assert_frame_equal(read_csv(written), table)


def test_fit_test_and_report_read_formula_named_classes_back(tmp_path):
    data = make_dataset(tmp_path / "tiny")
    for old, new in (("class_0", "=cmd"), ("class_1", "@a")):
        (data / old).rename(data / new)
    fitted = run_cli("fit", "--data.root", str(data), *TINY_FIT_ARGS, cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    run = tmp_path / "lightning_logs" / "tiny_cnn1" / "version_0"
    for name in ("split.csv", "predictions_finetune.csv"):
        text = (run / name).read_text()
        assert "\n'=cmd/" in text and "\n'@a/" in text and "\n=cmd/" not in text
    split = read_split(run / "split.csv")
    assert {label for label in split.label} == {"=cmd", "@a", "class_2"}
    assert all((data / path).is_file() for path in split.path)
    predictions = read_csv(run / "predictions_finetune.csv")
    assert set(predictions.path) == set(split[split.split == "test"].path)
    reported = run_cli("report", "lightning_logs", "--output", "report", cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-3000:]
    best = json.loads((run / "metrics.json").read_text())["phases"]["finetune"]["best_ckpt"]
    tested = run_cli("test", "--config", str(run / "config.yaml"), "--ckpt_path", best, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
