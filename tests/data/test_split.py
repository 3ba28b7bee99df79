from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_dataset, make_image
from tlbench.data.discover import Sample, scan_class_folders
from tlbench.data.split import make_split, split_counts, stratified_split
from tlbench.errors import TLBenchError


def samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(f"{label}/{i}.jpg", label) for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_70_20_10_with_every_class_in_every_split():
    table = stratified_split(samples({"a": 10, "b": 20, "c": 7}), seed=0)
    counts = table.groupby(["label", "split"]).size().unstack()
    assert counts.loc["a"].to_dict() == {"test": 1, "train": 7, "val": 2}
    assert counts.loc["b"].to_dict() == {"test": 2, "train": 14, "val": 4}
    assert counts.loc["c"].to_dict() == {"test": 1, "train": 5, "val": 1}


def test_split_is_deterministic_for_a_seed_and_independent_of_listing_order():
    items = samples({"a": 12, "b": 9})
    first = stratified_split(items, seed=3)
    again = stratified_split(list(reversed(items)), seed=3)
    other = stratified_split(items, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_splits_do_not_overlap_and_cover_every_sample():
    items = samples({"a": 15, "b": 11, "c": 3})
    table = stratified_split(items, seed=1)
    assert sorted(table.path) == sorted(s.path for s in items)
    assert table.path.is_unique


@pytest.mark.parametrize("n", [0, 1, 2])
def test_split_counts_refuse_fewer_than_three(n):
    with pytest.raises(ValueError):
        split_counts(n)


def test_small_class_and_single_class_give_clear_errors(tmp_path):
    make_dataset(tmp_path / "d", classes=2, per_class=5)
    for i in range(2):
        make_image(tmp_path / "d" / "tiny_class" / f"{i}.png", (0, 0, 0), i)
    with pytest.raises(TLBenchError, match=r"'tiny_class' \(2\)"):
        make_split(tmp_path / "d")
    make_dataset(tmp_path / "one", classes=1, per_class=5)
    with pytest.raises(TLBenchError, match="at least 2 classes"):
        make_split(tmp_path / "one")


def test_missing_root_and_empty_root_errors(tmp_path):
    with pytest.raises(TLBenchError, match="is not a folder"):
        make_split(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TLBenchError, match="no images found"):
        make_split(tmp_path / "empty")


def test_presplit_layout_is_used_as_given(tmp_path):
    make_dataset(tmp_path / "p" / "train", classes=2, per_class=4)
    make_dataset(tmp_path / "p" / "validate", classes=2, per_class=2)
    table = make_split(tmp_path / "p", select_fraction=0)  # no selection split carved from train
    assert table.groupby("split").size().to_dict() == {"train": 8, "val": 4}
    assert all(path.startswith(("train/", "validate/")) for path in table.path)


def test_hidden_files_and_folders_are_never_data(tmp_path):
    root = make_dataset(tmp_path / "h", classes=2, per_class=3)
    make_image(root / ".hidden_class" / "x.png", (0, 0, 0), 0)
    make_image(root / "class_0" / "._x.png", (0, 0, 0), 0)
    make_image(root / "__MACOSX" / "y.png", (0, 0, 0), 0)
    (root / "class_0" / ".DS_Store").write_bytes(b"junk")
    found = scan_class_folders(root)
    assert {s.label for s in found} == {"class_0", "class_1"}
    assert len(found) == 6


def test_extensions_any_case(tmp_path: Path):
    make_dataset(tmp_path / "e", classes=2, per_class=3, suffix=".JPG")
    assert len(scan_class_folders(tmp_path / "e")) == 6


def presplit(root: Path, train: int = 9, val: int = 3, test: int = 0, classes: int = 2) -> Path:
    """``root/train``, ``root/val`` (and ``root/test``) of distinct images per class."""
    for c in range(classes):
        for offset, (split, count) in enumerate((("train", train), ("val", val), ("test", test))):
            for i in range(count):
                colour = (40 + 60 * c, 90, 90)
                make_image(root / split / f"c{c}" / f"{split}_{i}.png", colour, seed=1000 * offset + 100 * c + i)
    return root


def test_a_train_val_layout_gets_a_selection_split_carved_from_train_only(tmp_path):
    root = presplit(tmp_path / "data", train=9)
    make_image(root / "train" / "lonely" / "only.png", (1, 2, 3), seed=1)
    make_image(root / "val" / "lonely" / "v.png", (1, 2, 3), seed=2)
    whole = make_split(root, select_fraction=0)
    table = make_split(root, seed=5)
    assert set(whole.split) == {"train", "val"}
    select = table[table.split == "select"]
    assert select.path.str.startswith("train/").all()
    assert select.groupby("label").size().to_dict() == {"c0": 1, "c1": 1}  # round(0.9) = 1; 'lonely' keeps its one
    pd.testing.assert_frame_equal(table[table.split == "val"], whole[whole.split == "val"])
    assert sorted(table.path) == sorted(whole.path)
    pd.testing.assert_frame_equal(table, make_split(root, seed=5))
    assert any(not make_split(root, seed=seed).equals(table) for seed in range(6, 12))
    assert make_split(root, seed=5, select_fraction=0.5).groupby("split").size()["select"] == 8


def test_layouts_with_a_test_split_get_no_selection_split(tmp_path):
    assert "select" not in set(make_split(presplit(tmp_path / "with_test", test=2)).split)
    assert "select" not in set(make_split(make_dataset(tmp_path / "folders")).split)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_selection_fraction_outside_0_1_is_refused(tmp_path, fraction):
    with pytest.raises(TLBenchError, match="select_fraction"):
        make_split(presplit(tmp_path / "data"), select_fraction=fraction)
