import pandas as pd

from tests.conftest import run_cli
from tlbench.data.split import make_split


def test_data_split_writes_the_same_split_as_fit(tiny_dataset, tmp_path):
    result = run_cli("data", "split", str(tiny_dataset), "--split_seed", "3", "--output", "s.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "30 images, train/val/test = 21/6/3" in result.stdout
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "s.csv"), make_split(tiny_dataset, 3))


def test_data_info_reports_classes_and_sizes(tiny_dataset, tmp_path):
    result = run_cli("data", "info", str(tiny_dataset), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 classes, 30 images" in result.stdout and "class_2" in result.stdout and "40" in result.stdout


def test_data_commands_report_bad_roots_in_one_line(tmp_path):
    result = run_cli("data", "info", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
