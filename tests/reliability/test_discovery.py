"""What ``fit`` and ``data info`` find under a data root is what ``data audit`` finds: file names that are not
UTF-8 train and survive every CSV, and entries that cannot be read are named, never dropped silently."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import COLOURS, TINY_FIT_ARGS, make_dataset, make_image, run_cli
from tlbench.__main__ import main
from tlbench.data.audit import audit
from tlbench.data.split import read_split, split_dataset
from tlbench.errors import TLBenchError
from tlbench.io import read_csv, write_csv

NOT_UTF8 = os.fsdecode(b"img_\xff.png")  # what Python lists for a file named with that byte: img_\udcff.png
# The entries of ``troubled_dataset`` that cannot be read, with the start of the reason each is given.
BAD = {
    "class_0/gone.png": "broken symlink",
    "class_0/loop": "symlink loop (links to a folder that contains it)",
    "class_0/pipe.png": "not a regular file (a FIFO)",
    "class_0/self.png": "symlink loop",
}
RUN = ("lightning_logs", "d_cnn1", "version_0")


def troubled_dataset(root: Path) -> Path:
    """Two classes of 8 images; ``class_0`` also links in 4 images from a hidden folder of the root (followed, as
    the audit follows links inside the root) and holds the entries of ``BAD``."""
    make_dataset(root, classes=2, per_class=8)
    for i in range(4):
        make_image(root / ".pool" / f"p{i}.png", COLOURS[0], seed=500 + i)
    folder = root / "class_0"
    (folder / "more").symlink_to("../.pool", target_is_directory=True)
    (folder / "loop").symlink_to("..", target_is_directory=True)
    (folder / "gone.png").symlink_to("missing.png")
    (folder / "self.png").symlink_to("self.png")
    os.mkfifo(folder / "pipe.png")
    return root


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
    result = run_cli("fit", "--data.root", str(root), *TINY_FIT_ARGS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "lightning_logs" / "d_cnn1" / "version_0"
    split = read_split(run / "split.csv")
    assert f"test/c0/{NOT_UTF8}" in set(split.path) and all((root / path).is_file() for path in split.path)
    for phase in ("head", "finetune"):
        assert f"test/c0/{NOT_UTF8}" in set(read_csv(run / f"predictions_{phase}.csv").path)


def test_data_audit_lists_a_bad_file_that_is_not_utf8_on_a_strict_utf8_terminal(tmp_path):
    root = split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    (root / "train" / "c0" / NOT_UTF8).write_text("not a picture")
    result = run_cli(
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


def test_fit_stops_on_the_entries_audit_reports_and_skips_and_lists_them_on_request(tmp_path):
    root = troubled_dataset(tmp_path / "d")
    for folder in ("stop", "skip"):
        (tmp_path / folder).mkdir()
    stopped = run_cli("fit", "--data.root", str(root), *TINY_FIT_ARGS, cwd=tmp_path / "stop")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("error: 4 unusable image file(s)") and "--data.skip_bad_images true" in line
    reasons = dict(read_csv((tmp_path / "stop").joinpath(*RUN, "bad_files.csv")).values)
    assert set(reasons) == set(BAD) and all(reasons[path].startswith(BAD[path]) for path in BAD)

    skipped = run_cli(
        "fit", "--data.root", str(root), *TINY_FIT_ARGS, "--data.skip_bad_images", "true", cwd=tmp_path / "skip"
    )
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    run = (tmp_path / "skip").joinpath(*RUN)
    assert set(read_csv(run / "bad_files.csv").path) == set(BAD)
    assert {entry["path"] for entry in json.loads((run / "metrics.json").read_text())["skipped"]} == set(BAD)
    trained = set(read_split(run / "split.csv").path)
    assert {f"class_0/more/p{i}.png" for i in range(4)} <= trained and len(trained) == 20


def test_data_info_and_data_audit_find_the_same_entries(tmp_path, capsys):
    root = troubled_dataset(tmp_path / "d")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "class_1" / "s.png"))
        result = audit(root)
        reasons = dict(result.bad)
        assert set(reasons) == {*BAD, "class_1/s.png"} and all(reasons[path].startswith(BAD[path]) for path in BAD)
        assert reasons["class_1/s.png"] == "not a regular file (a socket)"
        assert {label: sum(n.values()) for label, n in result.usable_counts().items()} == {"class_0": 12, "class_1": 8}
        assert main(["data", "info", str(root)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith("error: 5 unusable image file(s)")
        assert "fit skips them with --data.skip_bad_images true" in error
    for path in (*BAD, "class_1/s.png"):
        Path(os.path.join(root, path)).unlink()
    assert main(["data", "info", str(root)]) == 0
    assert "2 classes, 20 images" in capsys.readouterr().out
    assert main(["data", "audit", str(root), "--output", str(tmp_path / "audit")]) == 0
    assert "class_0: 12 usable" in capsys.readouterr().out


def test_a_folder_that_cannot_be_listed_is_a_bad_entry_and_an_unreadable_root_one_line(tmp_path, monkeypatch):
    """Mode 000 does not stop root (CI), so the refusal to list is made directly: what a user without read access
    to ``class_1/sub`` or to the root itself would meet."""
    root = make_dataset(tmp_path / "d", classes=2, per_class=8)
    make_image(root / "class_1" / "sub" / "x.png", COLOURS[1], seed=77)
    listable = os.scandir

    def scandir(path="."):
        if Path(path).name in ("sub", "locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return listable(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert dict(audit(root).bad) == {"class_1/sub": "folder cannot be read (Permission denied)"}
    locked = make_dataset(tmp_path / "locked", classes=2, per_class=3)
    with pytest.raises(TLBenchError, match=r"data root .*locked: folder cannot be read \(Permission denied\); give"):
        split_dataset(locked)


def test_a_data_root_named_in_bytes_that_are_not_utf8_is_refused_in_one_line(tmp_path):
    """Its name would go into the run folder's name, TensorBoard's hparams and every report: refused up front (it
    crashed fit inside TensorBoard), where names inside the root train."""
    root = make_dataset(Path(os.fsdecode(os.fsencode(tmp_path) + b"/data_\xff")), classes=2, per_class=4)
    for command in (["data", "info", str(root)], ["fit", "--data.root", str(root), *TINY_FIT_ARGS]):
        result = run_cli(*command, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.endswith(
            "data_\\udcff has a name that is not UTF-8, which run folders, TensorBoard and reports"
            " cannot hold; rename it"
        ), last
