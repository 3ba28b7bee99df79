"""The dataset audit, the ``data audit`` command and the pre-training preflight, on datasets built in tmp_path."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.reliability.conftest import smooth_image
from tlbench.data import audit as audit_module
from tlbench.data.audit import AuditResult, audit, cache_path, preflight
from tlbench.errors import TLBenchError

LEAVES = Path("/work/shared/data/leaves3")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private scan cache per test, so no test sees another's (or the user's) cached scans."""
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def dataset(tmp_path, photo) -> Path:
    """Two classes of three distinct, valid pictures each."""
    root = tmp_path / "data"
    for index in range(6):
        photo(root / ("cat" if index < 3 else "dog") / f"{index}.jpg", seed=index, quality=90)
    return root


def table_of(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def bad_reasons(result: AuditResult) -> dict[str, str]:
    return dict(result.bad)


def test_clean_dataset_is_clean(dataset):
    result = audit(dataset)
    assert result.clean and len(result.files) == 6 and {f.label for f in result.files} == {"cat", "dog"}


def test_bad_files_are_reported_with_their_reasons(dataset, photo):
    (dataset / "cat" / "empty.jpg").touch()
    (dataset / "cat" / "notes.png").write_text("hello")
    photo(dataset / "dog" / "tiny.png", image=Image.new("RGB", (8, 8)))
    cut = photo(dataset / "dog" / "cut.jpg", image=Image.effect_noise((200, 200), 50).convert("RGB"))
    cut.write_bytes(cut.read_bytes()[:2000])
    reasons = bad_reasons(audit(dataset))
    assert reasons.keys() == {"cat/empty.jpg", "cat/notes.png", "dog/tiny.png", "dog/cut.jpg"}
    assert reasons["cat/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["cat/notes.png"] == "not an image (unrecognised format)"
    assert reasons["dog/tiny.png"].startswith("too small")
    assert reasons["dog/cut.jpg"].startswith("cannot decode")


def test_hidden_and_os_files_are_ignored_and_never_classes(dataset, photo):
    photo(dataset / ".thumbnails" / "a.jpg", seed=20)
    photo(dataset / "cat" / "._0.jpg", seed=21)
    (dataset / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    photo(dataset / "__MACOSX" / "cat" / "x.jpg", seed=22)
    result = audit(dataset)
    assert result.clean and len(result.files) == 6 and {f.label for f in result.files} == {"cat", "dog"}


def test_exact_duplicates_are_grouped_within_and_across_classes(dataset):
    (dataset / "cat" / "copy.jpg").write_bytes((dataset / "cat" / "0.jpg").read_bytes())
    (dataset / "dog" / "stray.jpg").write_bytes((dataset / "cat" / "1.jpg").read_bytes())
    groups = {tuple(m.path for m in g.members): (g.match, g.kind) for g in audit(dataset).duplicates}
    assert groups == {
        ("cat/0.jpg", "cat/copy.jpg"): ("exact", "within-class"),
        ("cat/1.jpg", "dog/stray.jpg"): ("exact", "across-classes"),
    }


def test_resized_recompressed_copy_is_a_near_duplicate(dataset):
    smooth_image(4).resize((80, 80), Image.Resampling.LANCZOS).save(dataset / "dog" / "small_copy.jpg", quality=85)
    [group] = audit(dataset).duplicates
    assert (group.match, [m.path for m in group.members]) == ("near", ["dog/4.jpg", "dog/small_copy.jpg"])
    assert audit(dataset, near_threshold=-1).clean


def test_duplicates_across_splits_of_a_table_are_leakage(dataset):
    (dataset / "cat" / "copy.jpg").write_bytes((dataset / "cat" / "0.jpg").read_bytes())
    table = table_of([("cat/copy.jpg", "cat", "val"), ("cat/0.jpg", "cat", "train")])
    [group] = audit(dataset, table).duplicates
    assert group.kind == "across-splits" and [(m.path, m.split) for m in group.members] == [
        ("cat/0.jpg", "train"),
        ("cat/copy.jpg", "val"),
    ]


def test_presplit_folders_give_splits_without_a_table(tmp_path, photo):
    root = tmp_path / "presplit"
    for split, seeds in (("train", (0, 1)), ("validation", (0, 2))):
        for label in ("a", "b"):
            for seed in seeds:
                photo(root / split / label / f"{seed}.png", seed=seed + (10 if label == "b" else 0))
    kinds = sorted(g.kind for g in audit(root).duplicates)
    assert kinds == ["across-splits", "across-splits"]


def test_symlinks_inside_the_root_are_followed_outside_refused_and_loops_end(dataset, tmp_path, photo):
    outside = photo(tmp_path / "elsewhere" / "x.jpg", seed=30)
    photo(dataset / "dog" / "sub" / "s.jpg", seed=31)
    (dataset / "cat" / "linked.jpg").symlink_to(dataset / "dog" / "3.jpg")
    (dataset / "cat" / "alias").symlink_to(dataset / "dog" / "sub", target_is_directory=True)
    (dataset / "cat" / "out.jpg").symlink_to(outside)
    (dataset / "cat" / "outdir").symlink_to(outside.parent, target_is_directory=True)
    (dataset / "cat" / "loop").symlink_to(dataset / "cat", target_is_directory=True)
    (dataset / "cat" / "gone.jpg").symlink_to(dataset / "missing.jpg")
    (dataset / "cat" / "ring1.jpg").symlink_to(dataset / "cat" / "ring2.jpg")
    (dataset / "cat" / "ring2.jpg").symlink_to(dataset / "cat" / "ring1.jpg")
    result = audit(dataset)
    paths = {f.path for f in result.files}
    assert {"cat/linked.jpg", "cat/alias/s.jpg"} <= paths
    reasons = bad_reasons(result)
    assert reasons["cat/out.jpg"].startswith("symlink to a file outside the data root")
    assert reasons["cat/outdir"].startswith("symlink to a folder outside the data root")
    assert reasons["cat/loop"].startswith("symlink loop")
    assert reasons["cat/gone.jpg"] == "broken symlink (target missing)"
    assert reasons["cat/ring1.jpg"] == reasons["cat/ring2.jpg"] == "symlink loop"
    assert {tuple(m.path for m in g.members) for g in result.duplicates} == {
        ("cat/alias/s.jpg", "dog/sub/s.jpg"),
        ("cat/linked.jpg", "dog/3.jpg"),
    }


def test_unicode_and_comma_names_survive_the_csv(dataset, tmp_path, photo):
    name = "cat/héron, grand «1».jpg"
    photo(dataset / name, seed=0, quality=90)  # same picture as cat/0.jpg
    (dataset / "dog" / "bad, one.jpg").write_text("x")
    result = audit(dataset)
    audit_module.write_bad_files(result.bad, tmp_path / "bad.csv")
    audit_module.write_duplicates(result.duplicates, tmp_path / "dups.csv")
    assert pd.read_csv(tmp_path / "bad.csv").path.tolist() == ["dog/bad, one.jpg"]
    assert pd.read_csv(tmp_path / "dups.csv").path.tolist() == ["cat/0.jpg", name]


def test_second_scan_of_an_unchanged_folder_decodes_nothing(dataset, monkeypatch, cache_dir):
    decoded: list[Path] = []
    real_load = audit_module.load_rgb
    monkeypatch.setattr(
        audit_module, "load_rgb", lambda path, **options: decoded.append(Path(path)) or real_load(path, **options)
    )
    first = audit(dataset)
    assert len(decoded) == 6 and cache_path(dataset).is_relative_to(cache_dir)
    assert audit(dataset) == first and len(decoded) == 6
    changed = dataset / "dog" / "5.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")
    audit(dataset)
    assert decoded[6:] == [changed]
    assert sorted(p.name for p in dataset.rglob("*")) == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "3.jpg",
        "4.jpg",
        "5.jpg",
        "cat",
        "dog",
    ]


def test_same_size_overwrite_with_mtime_restored_is_scanned_again(dataset, photo):
    """Size and mtime alone are not a file's identity: a copy tool or ``touch -d`` can restore both over new
    content, so the cached digest must also check ctime and inode, which no user-level call can set back."""
    edited = photo(dataset / "cat" / "edited.bmp", seed=10)
    before = audit_module.scan_files(dataset, ["cat/edited.bmp"])["cat/edited.bmp"]
    stat = edited.stat()
    photo(edited, seed=11)
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert edited.stat().st_size == stat.st_size and edited.stat().st_mtime_ns == stat.st_mtime_ns
    after = audit_module.scan_files(dataset, ["cat/edited.bmp"])["cat/edited.bmp"]
    assert after.sha256 == hashlib.sha256(edited.read_bytes()).hexdigest() != before.sha256
    assert after.phash != before.phash


def run_audit(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """``python -m tlbench data audit ARGS`` with its own cache folder, in this process."""
    return run_cli("data", "audit", *args, cwd=cwd, env={"TLBENCH_CACHE_DIR": str(cache)})


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        return list(csv.reader(stream))


def test_cli_exit_codes_and_csvs(dataset, tmp_path, cache_dir, photo):
    for index in range(6, 9):  # a third image per class in the stratified split needs three per class
        photo(dataset / ("cat" if index < 8 else "dog") / f"{index}.jpg", seed=index)
    clean = run_audit(str(dataset), cwd=tmp_path, cache=cache_dir)
    assert clean.returncode == 0, clean.stderr
    assert read_rows(tmp_path / "lightning_logs" / "audit" / "data" / "bad_files.csv") == [["path", "reason"]]
    assert read_rows(tmp_path / "lightning_logs" / "audit" / "data" / "duplicates.csv") == [
        ["group", "kind", "match", "path", "label", "split"]
    ]

    (dataset / "cat" / "empty.jpg").touch()
    (dataset / "dog" / "copy.jpg").write_bytes((dataset / "cat" / "0.jpg").read_bytes())
    dirty = run_audit(
        str(dataset), "--output", str(tmp_path / "report"), "--near_threshold", "0", cwd=tmp_path, cache=cache_dir
    )
    assert dirty.returncode == 1, dirty.stderr
    assert "cat/empty.jpg: empty file (0 bytes)" in dirty.stdout
    assert read_rows(tmp_path / "report" / "bad_files.csv")[1:] == [["cat/empty.jpg", "empty file (0 bytes)"]]
    duplicates = read_rows(tmp_path / "report" / "duplicates.csv")[1:]
    assert sorted((row[0], row[2], row[3], row[4]) for row in duplicates) == [
        ("1", "exact", "cat/0.jpg", "cat"),
        ("1", "exact", "dog/copy.jpg", "dog"),
    ]
    assert duplicates[0][1].startswith("across-classes")

    missing = run_audit(str(tmp_path / "nowhere"), cwd=tmp_path, cache=cache_dir)
    assert missing.returncode == 2 and missing.stderr.startswith("error: data root")


def test_preflight_refuses_bad_files_unless_told_to_skip(dataset):
    (dataset / "cat" / "empty.jpg").touch()
    table = table_of([("cat/0.jpg", "cat", "train"), ("cat/empty.jpg", "cat", "train"), ("dog/3.jpg", "dog", "train")])
    with pytest.raises(
        TLBenchError, match=r"1 unusable image file\(s\): cat/empty.jpg \(empty file.*--data.skip_bad_images true"
    ):
        preflight(dataset, table)
    result = preflight(dataset, table, skip_bad=True)
    assert result.table.path.tolist() == ["cat/0.jpg", "dog/3.jpg"]
    assert result.skipped == [("cat/empty.jpg", "empty file (0 bytes)")]


def test_preflight_writes_the_report_it_names(dataset, tmp_path):
    (dataset / "cat" / "empty.jpg").touch()
    with pytest.raises(TLBenchError, match="report/bad_files.csv"):
        preflight(dataset, table_of([("cat/empty.jpg", "cat", "train")]), report_dir=tmp_path / "report")
    assert read_rows(tmp_path / "report" / "bad_files.csv")[1:] == [["cat/empty.jpg", "empty file (0 bytes)"]]


def test_preflight_refuses_leakage_unless_told_to_dedupe(dataset):
    (dataset / "cat" / "copy.jpg").write_bytes((dataset / "cat" / "0.jpg").read_bytes())
    (dataset / "dog" / "copy.jpg").write_bytes((dataset / "dog" / "3.jpg").read_bytes())
    table = table_of(
        [
            ("cat/copy.jpg", "cat", "test"),
            ("cat/0.jpg", "cat", "val"),
            ("cat/1.jpg", "cat", "train"),
            ("dog/3.jpg", "dog", "train"),
            ("dog/copy.jpg", "dog", "train"),
        ]
    )
    with pytest.raises(TLBenchError, match=r"cat/0.jpg = cat/copy.jpg \(exact\).*--data.dedupe true"):
        preflight(dataset, table)
    result = preflight(dataset, table, dedupe=True)
    assert sorted(result.table.path) == ["cat/0.jpg", "cat/1.jpg", "dog/3.jpg", "dog/copy.jpg"]
    assert result.skipped == [("cat/copy.jpg", "exact duplicate of cat/0.jpg")]
    assert result.problems == [
        "duplicate images, exact within-class: dog/3.jpg (dog, train), dog/copy.jpg (dog, train)"
    ]


def test_preflight_refuses_to_lose_a_whole_class(dataset):
    (dataset / "dog" / "empty.jpg").touch()
    table = table_of([("cat/0.jpg", "cat", "train"), ("dog/empty.jpg", "dog", "train"), ("dog/3.jpg", "dog", "val")])
    with pytest.raises(TLBenchError, match=r"classes \['dog'\] have no usable training image"):
        preflight(dataset, table, skip_bad=True)


@pytest.mark.skipif(not LEAVES.is_dir(), reason="real photos not available")
def test_real_leaves_dataset_is_clean():
    result = audit(LEAVES)
    assert result.clean and len(result.files) == 52, (result.bad, [g.describe() for g in result.duplicates])


def test_audit_command_refuses_a_folder_without_images(tmp_path):
    from tlbench.commands.audit import audit as audit_command

    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(TLBenchError, match="no image files under"):
        audit_command(str(tmp_path / "empty"), output=str(tmp_path))


def test_audit_shows_a_scan_bar_on_stderr_only_when_asked(dataset, tmp_path, cache_dir, photo):
    for index in range(6, 9):
        photo(dataset / ("cat" if index < 8 else "dog") / f"{index}.jpg", seed=index)
    quiet = run_audit(str(dataset), "--output", "quiet", cwd=tmp_path, cache=cache_dir)
    assert quiet.returncode == 0 and quiet.stderr == ""  # captured, not a terminal: no bar in logs
    shown = run_audit(str(dataset), "--output", "shown", "--progress", "true", cwd=tmp_path, cache=tmp_path / "fresh")
    assert shown.returncode == 0, shown.stderr
    assert "scanning data: 100%" in shown.stderr and "9/9" in shown.stderr and "scanning" not in shown.stdout


@pytest.mark.parametrize("enable_progress_bar", [True, False])
def test_fit_scan_bar_follows_the_trainers_progress_bar(dataset, capsys, enable_progress_bar):
    from pytorch_lightning import Trainer

    from tlbench.data.datamodule import ImageFolderDataModule

    datamodule = ImageFolderDataModule(str(dataset), split_file=None)
    datamodule.trainer = Trainer(
        logger=False, accelerator="cpu", enable_progress_bar=enable_progress_bar, enable_model_summary=False
    )
    capsys.readouterr()
    assert len(datamodule.prepare_split()) == 6
    assert ("scanning data" in capsys.readouterr().err) == enable_progress_bar
