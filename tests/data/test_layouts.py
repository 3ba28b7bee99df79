"""Every dataset layout users bring: detected, reported in one ``layout:`` line, split as documented, and the
ambiguous ones refused in one line that asks which was meant."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY_FIT_ARGS, make_dataset, make_image, run_cli
from tlbench.__main__ import main
from tlbench.data.datamodule import ImageFolderDataModule
from tlbench.data.split import make_split, split_dataset
from tlbench.errors import TLBenchError


def split_folders(root: Path, **counts: int) -> Path:
    """``root/<split>/class_<c>/`` of distinct images, ``counts`` images per class for each split named."""
    for offset, (split, per_class) in enumerate(counts.items()):
        for c in range(2):
            for i in range(per_class):
                make_image(
                    root / split / f"class_{c}" / f"{split}_{i}.png",
                    (60 + 120 * c, 90, 90),
                    1000 * offset + 100 * c + i,
                )
    return root


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m tlbench ARGS`` in this process: the exit status, stdout and stderr."""
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def data_command(capsys, command: str, root: Path, *args: str) -> tuple[int, str, str]:
    """``data info ROOT`` or ``data audit ROOT`` (its reports beside ROOT) in this process."""
    output = ["--output", str(root.parent / "audit")] if command == "audit" else []
    return cli(capsys, "data", command, str(root), *output, *args)


def test_train_test_is_a_split_layout_with_val_carved_from_train(tmp_path, capsys):
    root = split_folders(tmp_path / "food", train=20, test=4)
    status, out, _ = cli(capsys, "data", "info", str(root))
    assert status == 0
    assert out.splitlines()[0] == "layout: train/test (val carved from train: 10% stratified, seed 0)"
    assert "2 classes, 48 images" in out and not any(line.startswith(("train ", "test ")) for line in out.splitlines())
    table = make_split(root, seed=4)
    counts = table.groupby(["split", "label"]).size().unstack()
    assert counts.loc["val"].tolist() == [2, 2] and counts.loc["train"].tolist() == [18, 18]
    assert counts.loc["test"].tolist() == [4, 4] and table.path[table.split == "test"].str.startswith("test/").all()
    assert table.path[table.split == "val"].str.startswith("train/").all()
    pd.testing.assert_frame_equal(table, make_split(root, seed=4))
    assert any(not make_split(root, seed=seed).equals(table) for seed in range(5, 10))
    quarter = split_dataset(root, seed=4, val_fraction=0.25)
    assert quarter.layout == "layout: train/test (val carved from train: 25% stratified, seed 4)"
    assert (quarter.table.split == "val").sum() == 10


@pytest.mark.parametrize("fraction", ["0", "1", "-0.2"])
def test_a_val_fraction_outside_0_1_is_refused(tmp_path, capsys, fraction):
    status, _, err = cli(
        capsys, "data", "info", str(split_folders(tmp_path / "d", train=4, test=1)), "--val_fraction", fraction
    )
    assert status == 2 and "--data.val_fraction" in err and len(err.splitlines()) == 1


def test_each_layout_says_how_it_was_split(tmp_path):
    layouts = {
        split_folders(tmp_path / "all3", train=5, val=2, test=2): "layout: train/val/test (used as given)",
        split_folders(tmp_path / "tv", train=10, val=2): (
            "layout: train/val (used as given; select carved from train: 10% stratified, seed 0)"
        ),
        make_dataset(tmp_path / "classes", classes=2, per_class=5): (
            "layout: class folders (split 70/20/10 stratified, seed 0)"
        ),
    }
    for root, line in layouts.items():
        assert split_dataset(root).layout == line
    assert split_dataset(tmp_path / "tv", select_fraction=0).layout == (
        "layout: train/val (used as given; val also chooses checkpoints)"
    )
    # Only a split carved from the given train split, choosing for a split given separately, may see another
    # distribution than the reported one (the summary says so).
    carved = {root.name: split_dataset(root).selection_from_train for root in layouts}
    assert carved == {"all3": False, "tv": True, "classes": False}
    assert split_dataset(split_folders(tmp_path / "tt", train=5, test=2)).selection_from_train
    assert not split_dataset(tmp_path / "tv", select_fraction=0).selection_from_train
    assert set(make_split(tmp_path / "all3").split) == {"train", "val", "test"}


def test_a_folder_without_images_beside_the_splits_is_not_data(tmp_path):
    root = split_folders(tmp_path / "d", train=4, test=2)
    (root / "annotations").mkdir()
    (root / "annotations" / "boxes.json").write_text("{}")
    assert split_dataset(root).layout.startswith("layout: train/test ")


def _mixed(root: Path) -> None:
    split_folders(root, train=3, test=2)
    make_dataset(root, classes=1, per_class=3)


def _classes_named_like_splits(root: Path) -> None:
    for split in ("train", "test"):
        for i in range(4):
            make_image(root / split / f"{i}.png", (10, 200, 10) if split == "train" else (200, 10, 10), i)


def _unlabelled_test(root: Path) -> None:
    split_folders(root, train=3)
    for i in range(3):
        make_image(root / "test" / f"{i}.png", (90, 90, 90), 50 + i)


def _two_val_folders(root: Path) -> None:
    split_folders(root, train=3, val=1, validation=1)


def _train_only(root: Path) -> None:
    split_folders(root, train=3)


def _no_train(root: Path) -> None:
    split_folders(root, val=3, test=1)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            _mixed,
            r"mixes split folders \(train, test\) with other folders of images \(class_0\): split data or classes",
        ),
        (_classes_named_like_splits, r"train holds images, not class folders: are train, test splits or classes\?"),
        (_two_val_folders, r"has val and validation folders: which one is the val split\?"),
        (_unlabelled_test, r"test holds images without class folders .* an unlabelled test split cannot be scored"),
        (_train_only, r"has a train folder only: pass --data.root .*train to split its classes"),
        (_no_train, r"has val, test but no train folder"),
    ],
)
def test_ambiguous_layouts_are_refused_in_one_line_that_asks(tmp_path, capsys, build, expected):
    build(tmp_path / "d")
    with pytest.raises(TLBenchError, match=expected):
        split_dataset(tmp_path / "d")
    for command in ("info", "audit"):
        status, _, err = data_command(capsys, command, tmp_path / "d")
        assert status == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err


def test_class_names_with_spaces_and_unicode_are_kept_end_to_end(tmp_path, capsys):
    root = tmp_path / "birds"
    names = ["great tit", "mésange bleue", "日本の鳥"]
    for c, name in enumerate(names):
        for i in range(4):
            make_image(root / name / f"photo {i}.png", (50 * c, 100, 200 - 50 * c), 10 * c + i)
    status, out, _ = cli(capsys, "data", "split", str(root), "--output", str(tmp_path / "split.csv"))
    assert status == 0
    assert sorted(set(pd.read_csv(tmp_path / "split.csv").label)) == sorted(names)
    status, out, _ = cli(capsys, "data", "info", str(root))
    assert status == 0 and all(name in out for name in names)


@pytest.mark.parametrize(
    "names",
    [("Cat", "cat"), (unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"))],
    ids=["case", "unicode-form"],
)
def test_class_names_equal_but_for_case_or_unicode_form_are_refused(tmp_path, names):
    root = tmp_path / "d"
    for c, name in enumerate(names):
        for i in range(3):
            make_image(root / name / f"{i}.png", (200 * c, 50, 50), 10 * c + i)
    if len({p.name for p in root.iterdir()}) < 2:
        pytest.skip("this file system merges the two names itself")
    with pytest.raises(TLBenchError, match="differ only in case or Unicode form.*rename or merge them"):
        split_dataset(root)
    split_folders(tmp_path / "s", train=3, test=1)
    make_image(tmp_path / "s" / "train" / "CLASS_0" / "x.png", (1, 2, 3), 1)
    with pytest.raises(TLBenchError, match="'CLASS_0' and 'class_0' differ only in case"):
        split_dataset(tmp_path / "s")


def write_labels(root: Path, rows: list[str], header: str = "path,label,split") -> Path:
    labels = root / "labels.csv"
    labels.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return labels


def flat_images(root: Path, n: int = 8) -> list[str]:
    for i in range(n):
        make_image(root / "images" / f"{i:03d}.jpg", (200, 40, 40) if i % 2 else (40, 40, 200), i)
    return [f"images/{i:03d}.jpg" for i in range(n)]


def test_a_labels_file_labels_a_flat_folder_with_or_without_its_split(tmp_path, capsys):
    root = tmp_path / "flat"
    paths = flat_images(root, 12)
    labels = ["red" if i % 2 else "blue" for i in range(12)]
    splits = ["train"] * 8 + ["validation", "val", "test", "TEST"]
    given = write_labels(root, [f"{p},{label},{s}" for p, label, s in zip(paths, labels, splits)])
    result = split_dataset(root, labels_csv=given)
    assert result.layout == "layout: labels file labels.csv (used as given)"
    assert result.table.groupby("split").size().to_dict() == {"train": 8, "val": 2, "test": 2}
    unsplit = write_labels(root, [f"./{p}, {label}" for p, label in zip(paths, labels)], header="path,label")
    result = split_dataset(root, labels_csv=unsplit)
    assert result.layout == "layout: labels file labels.csv (split 70/20/10 stratified, seed 0)"
    assert sorted(result.table.path) == paths and len(result.table) == 12
    train_test = write_labels(
        root, [f"{p},{label},{'test' if i >= 10 else 'train'}" for i, (p, label) in enumerate(zip(paths, labels))]
    )
    status, out, _ = cli(capsys, "data", "info", str(root), "--data.labels_csv", str(train_test))
    assert status == 0 and out.startswith("layout: labels file labels.csv (val carved from train: 10% stratified")
    status, out, _ = data_command(capsys, "audit", root, "--labels_csv", str(train_test))
    assert status == 0 and "12 image files in 2 classes" in out and "blue: 6 usable" in out


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("file,class", "images/000.jpg,blue", r"missing \['label', 'path'\]"),
        ("path,label,split", "images/000.jpg,,train", r"line\(s\) 2 have an empty path or label"),
        ("path,label,split", "images/000.jpg,blue,holdout", "split 'holdout'; give every row train, val or test"),
        ("path,label", "images/nope.jpg,blue", r"1 listed file\(s\) are missing under .*nope.jpg"),
        ("path,label", "../elsewhere.jpg,blue", "name files outside"),
        ("path,label", "images/000.jpg,red", "images/000.jpg is listed with different labels"),
    ],
)
def test_a_bad_labels_file_is_refused_in_one_line(tmp_path, header, row, expected):
    root = tmp_path / "flat"
    paths = flat_images(root, 6)
    rows = [f"{p},{'red' if i % 2 else 'blue'}" + (",train" if "split" in header else "") for i, p in enumerate(paths)]
    with pytest.raises(TLBenchError, match=expected):
        split_dataset(root, labels_csv=write_labels(root, [row, *rows], header=header))


def test_a_missing_labels_file_names_the_option(tmp_path):
    with pytest.raises(TLBenchError, match="--data.labels_csv .* is not a file"):
        split_dataset(make_dataset(tmp_path / "d", classes=2, per_class=3), labels_csv=tmp_path / "nope.csv")
    with pytest.raises(TLBenchError, match="both label the images; pass one"):
        ImageFolderDataModule(str(tmp_path / "d"), split_file="split.csv", labels_csv="labels.csv")


def test_links_out_of_the_root_are_refused_in_one_line_naming_the_flag(tmp_path, capsys):
    store = make_dataset(tmp_path / "store", classes=2, per_class=30)
    subset = tmp_path / "subset"
    for image in store.rglob("*.png"):
        (subset / image.parent.name).mkdir(parents=True, exist_ok=True)
        (subset / image.parent.name / image.name).symlink_to(image)
    for command in ("info", "audit"):
        status, _, err = data_command(capsys, command, subset)
        assert status == 2 and len(err.splitlines()) == 1
        assert "60 image file(s) under" in err and "pass --data.allow_external_links true" in err
    status, out, _ = cli(capsys, "data", "info", str(subset), "--data.allow_external_links", "true")
    assert status == 0 and "2 classes, 60 images" in out
    status, out, _ = data_command(capsys, "audit", subset, "--allow_external_links", "true")
    assert status == 0 and "bad files: 0" in out


def test_data_info_on_a_non_image_jpg_names_the_file_without_a_traceback(tmp_path):
    root = make_dataset(tmp_path / "d", classes=2, per_class=3)
    (root / "class_1" / "notes.jpg").write_text("not a picture")
    result = run_cli("data", "info", str(root), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "class_1/notes.jpg (not an image (unrecognised format)); remove or replace them" in result.stderr


def test_fit_on_a_train_test_layout_reports_its_layout_and_tests_on_the_given_test(tmp_path):
    root = split_folders(tmp_path / "official", train=10, test=3)
    result = run_cli("fit", "--data.root", str(root), *TINY_FIT_ARGS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{root}: layout: train/test (val carved from train: 10% stratified, seed 0)" in result.stdout
    metrics = json.loads((tmp_path / "lightning_logs" / "official_cnn1" / "version_0" / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 18, "val": 2, "test": 6} and metrics["test_on"] == "test"
    assert metrics["classes"] == ["class_0", "class_1"] and metrics["layout"].startswith("layout: train/test")
    assert metrics["selection_from_train"] and "'val' (which chose the checkpoints and the final phase) was carved" in (
        result.stdout
    )
