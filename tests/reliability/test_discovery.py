"""What ``fit`` and ``data info`` find under a data root is what ``data audit`` finds: file names that are not
UTF-8 train and survive every CSV, and entries that cannot be read are named, never dropped silently."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import COLOURS, TINY_FIT_ARGS, make_image, run_tlbench
from tlbench.data.split import read_split, split_dataset
from tlbench.errors import TLBenchError
from tlbench.io import read_csv, write_csv

NOT_UTF8 = os.fsdecode(b"img_\xff.png")  # what Python lists for a file named with that byte: img_\udcff.png


def split_folders(root: Path, counts: dict[str, int]) -> Path:
    """``root/<split>/c<k>/<i>.png`` for two classes, ``counts[split]`` distinct images per class."""
    for s, (split, n) in enumerate(counts.items()):
        for c in range(2):
            for i in range(n):
                make_image(root / split / f"c{c}" / f"{i}.png", COLOURS[c], seed=1000 * s + 100 * c + i)
    return root


def test_csv_round_trips_a_file_name_that_is_not_utf8(tmp_path):
    table = write_csv(tmp_path / "t.csv", pd.DataFrame({"path": [f"c0/{NOT_UTF8}", "c0/é.png"]}))
    assert b"img_\xff.png" in table.read_bytes()
    assert read_csv(table).path.tolist() == [f"c0/{NOT_UTF8}", "c0/é.png"]


def test_fit_trains_on_a_file_name_that_is_not_utf8_and_its_csvs_give_the_path_back(tmp_path):
    root = split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    (root / "test" / "c0" / "0.png").rename(root / "test" / "c0" / NOT_UTF8)
    result = run_tlbench("fit", "--data.root", str(root), *TINY_FIT_ARGS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "lightning_logs" / "d_cnn1" / "version_0"
    split = read_split(run / "split.csv")
    assert f"test/c0/{NOT_UTF8}" in set(split.path) and all((root / path).is_file() for path in split.path)
    for phase in ("head", "finetune"):
        assert f"test/c0/{NOT_UTF8}" in set(read_csv(run / f"predictions_{phase}.csv").path)


def test_data_audit_lists_a_bad_file_that_is_not_utf8_on_a_strict_utf8_terminal(tmp_path):
    root = split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    (root / "train" / "c0" / NOT_UTF8).write_text("not a picture")
    result = run_tlbench(
        "data", "audit", str(root), "--output", str(tmp_path / "audit"), cwd=tmp_path, env={"PYTHONIOENCODING": "utf-8"}
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "train/c0/img_\\udcff.png: not an image" in result.stdout


def test_a_class_name_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    root = split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    for split in ("train", "val", "test"):
        (root / split / "c1").rename(root / split / os.fsdecode(b"cl\xe9"))
    with pytest.raises(TLBenchError, match=r"class name b'cl\\xe9' is not UTF-8 text.*rename"):
        split_dataset(root)
