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
    table = make_split(tmp_path / "p")
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
