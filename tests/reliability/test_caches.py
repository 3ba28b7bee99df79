"""Damaged cache entries are misses, never answers and never tracebacks; caches stay bounded under concurrency.

Each of the four caches (features, decoded images, audit scans, ONNX graphs) gets its entries truncated, replaced
by random bytes, zeroed, emptied, a payload byte flipped, and an entry of another key copied over; the result must
equal a cold-cache run and the damage must be counted in one line. Entries are found by listing the cache folder,
so the same tests run against any on-disk layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_FIT_ARGS, make_dataset, make_image, run_cli


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entries(cache: Path, kind: str) -> list[Path]:
    """The files of one cache kind, oldest first (never a temporary file of a write in progress)."""
    files = [path for path in (cache / kind).rglob("*") if path.is_file() and not path.name.startswith(".")]
    return sorted(files, key=lambda path: path.stat().st_mtime_ns)


def edit_payload(path: Path, edit: Callable[[bytes], bytes]) -> None:
    """Rewrite the payload of an entry and keep its header line if it has one: a change a checksum must catch."""
    data = path.read_bytes()
    header, newline, payload = data.partition(b"\n") if data.startswith(b"tlbench-cache") else (b"", b"", data)
    path.write_bytes(header + newline + edit(payload))


def flip_last_byte(payload: bytes) -> bytes:
    return payload[:-1] + bytes([payload[-1] ^ 0xFF])


# damage(entry, another key's entry)
DAMAGE: dict[str, Callable[[Path, Path], None]] = {
    "random-bytes": lambda entry, other: entry.write_bytes(os.urandom(100)),
    "truncated": lambda entry, other: entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2]),
    "zeroed": lambda entry, other: entry.write_bytes(bytes(entry.stat().st_size)),
    "empty": lambda entry, other: entry.write_bytes(b""),
    "flipped-byte": lambda entry, other: edit_payload(entry, flip_last_byte),
    "swapped": lambda entry, other: shutil.copyfile(other, entry),
}


def notices(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tlbench:")]


# -- decoded images -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_decoded_image_is_decoded_again(damage, tmp_path, own_cache, capfd):
    from tlbench.data.decode_cache import DecodedImageCache

    photos = [make_image(tmp_path / f"{name}.png", (200, 30 * i, 40), seed=i, size=90) for i, name in enumerate("ab")]
    hashes = [hashlib.sha256(photo.read_bytes()).hexdigest() for photo in photos]
    cold = [np.asarray(DecodedImageCache(64, "bilinear").load(p, h)) for p, h in zip(photos, hashes, strict=True)]
    entry, other = (next(p for p in entries(own_cache, "decoded") if h in p.name) for h in hashes)
    capfd.readouterr()
    DAMAGE[damage](entry, other)
    again = np.asarray(DecodedImageCache(64, "bilinear").load(photos[0], hashes[0]))
    assert np.array_equal(again, cold[0])
    assert notices(capfd.readouterr().err) == ["tlbench: decoded-image cache: 1 corrupt entry removed and rebuilt"]
    photos[0].write_bytes(b"")  # the rebuilt entry now answers alone
    assert np.array_equal(np.asarray(DecodedImageCache(64, "bilinear").load(photos[0], hashes[0])), cold[0])


# -- audit scans --------------------------------------------------------------------------------------------------
def zero_digests(payload: bytes) -> bytes:
    """Every cached sha256 of a scan replaced by zeros: the entry parses but lies."""
    stored = json.loads(payload)
    for scan in stored["files"].values():
        scan[4] = "0" * 64
    return json.dumps(stored).encode()


@pytest.mark.parametrize("damage", [*DAMAGE, "digests-zeroed"])
def test_a_damaged_audit_scan_is_scanned_again(damage, tmp_path, own_cache, capfd):
    from tlbench.data.audit import scan_files

    roots = [make_dataset(tmp_path / name, classes=2, per_class=2) for name in ("one", "two")]
    paths = [sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) for root in roots]
    cold = scan_files(roots[0], paths[0])
    entry = entries(own_cache, "audit")[0]
    scan_files(roots[1], paths[1])
    other = next(p for p in entries(own_cache, "audit") if p != entry)
    capfd.readouterr()
    if damage == "digests-zeroed":
        edit_payload(entry, zero_digests)
    else:
        DAMAGE[damage](entry, other)
    assert scan_files(roots[0], paths[0]) == cold
    assert notices(capfd.readouterr().err) == ["tlbench: audit scan cache: 1 corrupt entry removed and rebuilt"]


# -- ONNX graphs --------------------------------------------------------------------------------------------------
def backbone_engine(seed: int):
    from tlbench.models.engine import Engine
    from tlbench.models.module import TransferLearningModule

    torch.manual_seed(seed)
    model = TransferLearningModule(backbone="cnn1", pretrained=False, input_size=32, classes=["a", "b"])
    backbone = model.backbone.eval()
    return Engine(backbone, backbone, "onnxruntime", "cpu", "test backbone", "pooled"), model


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_onnx_graph_is_exported_again(damage, own_cache, capfd):
    engine, model = backbone_engine(0)
    batch = model.preprocessing.normalize(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    cold = engine(batch)
    entry = entries(own_cache, "onnx")[0]
    backbone_engine(1)[0](batch)  # another network's graph, under its own key
    other = next(p for p in entries(own_cache, "onnx") if p != entry)
    capfd.readouterr()
    DAMAGE[damage](entry, other)
    again = backbone_engine(0)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = again(batch)
    assert [str(w.message) for w in caught if "ONNX Runtime not used" in str(w.message)] == []
    assert again.name == "onnxruntime" and torch.equal(answer, cold)
    assert notices(capfd.readouterr().err) == ["tlbench: ONNX graph cache: 1 corrupt entry removed and rebuilt"]


# -- features, through a real fit ---------------------------------------------------------------------------------
HEAD_ONLY = [*TINY_FIT_ARGS, "--model.head_epochs", "2", "--model.finetune_epochs", "0", "--data.augment", "false"]
COMPARED = ("best_epoch", "val_acc", "val_loss", "test_acc", "test_ece", "test_macro_f1")


def head_fit(data: Path, cwd: Path, cache: Path) -> tuple[dict, str]:
    """A head-only tiny fit through the CLI: the head phase's numbers (no timings, no paths) and stderr."""
    cwd.mkdir(parents=True)
    result = run_cli("fit", "--data.root", str(data), *HEAD_ONLY, cwd=cwd, env={"TLBENCH_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    head = json.loads((cwd / "lightning_logs" / "tiny_cnn1" / "version_0" / "metrics.json").read_text())["phases"]
    return {key: head["head"][key] for key in COMPARED}, result.stderr


@pytest.fixture(scope="module")
def cold_fit(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One fit on cold caches: its data, its cache folder (copied by each test) and its numbers."""
    root = tmp_path_factory.mktemp("cold")
    data = make_dataset(root / "tiny")
    metrics, _ = head_fit(data, root / "run", root / "cache")
    return data, root / "cache", metrics


def zero_targets(payload: bytes) -> bytes:
    """The issue's tamper: the stored targets of a feature entry set to zeros (every image "class 0")."""
    stored = torch.load(io.BytesIO(payload), weights_only=True)
    stored["targets"] = torch.zeros_like(stored["targets"])
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", [*DAMAGE, "targets-zeroed"])
def test_a_fit_on_a_damaged_feature_entry_equals_the_cold_run(damage, cold_fit, tmp_path, own_cache):
    data, cold_cache, cold_metrics = cold_fit
    shutil.copytree(cold_cache, own_cache)
    train, val = sorted(entries(own_cache, "features"), key=lambda path: -path.stat().st_size)  # train is larger
    if damage == "targets-zeroed":
        edit_payload(val, zero_targets)
    else:
        DAMAGE[damage](val, train)
    metrics, stderr = head_fit(data, tmp_path / "run", own_cache)
    assert metrics == cold_metrics
    assert notices(stderr) == ["tlbench: feature cache: 1 corrupt entry removed and rebuilt"]


def test_an_unwritable_cache_folder_costs_one_line_not_the_run(tiny_dataset, tmp_path):
    """Every cache write fails (the cache folder's parent is a file, so even root cannot create it): the fit still
    runs, without caching, and says so once with the fix."""
    (tmp_path / "not_a_folder").write_text("")
    unwritable = tmp_path / "not_a_folder" / "cache"
    _, stderr = head_fit(tiny_dataset, tmp_path / "run", unwritable)
    [line] = notices(stderr)
    assert line.startswith(f"tlbench: cannot write the cache folder {unwritable}/")
    assert line.endswith("; set TLBENCH_CACHE_DIR to a writable folder")


# -- eviction -----------------------------------------------------------------------------------------------------
def fill(folder: Path, count: int, size: int) -> None:
    """``count`` entries of ``size`` bytes, the i-th last used at second 1000 + i."""
    folder.mkdir(parents=True)
    for i in range(count):
        entry = folder / f"{i:06d}.entry"
        entry.write_bytes(b"x" * size)
        os.utime(entry, (1000 + i, 1000 + i))


_start = None  # a multiprocessing Barrier, handed to each pruner process by the pool's initializer


def _prune_after_the_barrier(_: int) -> int:
    from tlbench.cache import Cache

    _start.wait(timeout=120)
    return Cache("decoded").prune()


def _set_barrier(barrier) -> None:
    global _start
    _start = barrier


def test_two_processes_pruning_30000_entries_at_once_both_finish(own_cache, monkeypatch):
    fill(own_cache / "decoded", 30_000, 100)
    monkeypatch.setenv("TLBENCH_CACHE_DECODED_LIMIT", str(10_000 * 100))
    # spawn, not fork: a fork of this many-threaded test process (Ray's, ONNX Runtime's, OpenVINO's threads from
    # earlier tests) can copy a lock another thread held, and a child then waits forever (the suite hung here once)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    with ProcessPoolExecutor(2, context, initializer=_set_barrier, initargs=(barrier,)) as pool:
        deleted = list(pool.map(_prune_after_the_barrier, range(2)))
    assert sum(deleted) == 20_000  # each entry deleted once, by one of them
    assert sorted(path.name for path in (own_cache / "decoded").iterdir()) == [
        f"{i:06d}.entry" for i in range(20_000, 30_000)
    ]


def test_a_hit_makes_an_entry_recently_used_and_each_kind_has_a_limit(own_cache, monkeypatch):
    from tlbench.cache import Cache

    cache = Cache("features")
    for key in ("a", "b", "c"):
        cache.put(key, key.encode() * 1000)
        os.utime(cache.path(key), (1000, 1000))
    assert cache.get("a") == b"a" * 1000  # a is used again: b is now the least recently used
    monkeypatch.setenv("TLBENCH_CACHE_FEATURES_LIMIT", str(2 * cache.path("a").stat().st_size))
    assert Cache("features").prune() == 1
    assert [cache.get(key) is not None for key in "abc"] == [True, False, True]


def test_a_store_prunes_so_a_cache_never_grows_past_its_limit_for_long(own_cache, monkeypatch):
    from tlbench.cache import Cache

    monkeypatch.setenv("TLBENCH_CACHE_ONNX_LIMIT", "10K")
    cache = Cache("onnx")
    for i in range(40):
        cache.put(f"graph{i}", bytes(1000))
    info = cache.info()
    assert info.limit == 10 * 1024 and info.bytes <= info.limit
    assert cache.get("graph39") == bytes(1000)


# -- the command --------------------------------------------------------------------------------------------------
def test_cache_info_and_clear_through_the_cli(tmp_path, own_cache):
    from tlbench.cache import Cache

    for kind in ("features", "decoded", "audit", "onnx"):
        for key in ("one", "two"):
            Cache(kind).put(key, b"payload")
    shown = run_cli("cache", "info", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stderr == ""
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
    assert set(lines) == {"features", "decoded", "audit", "onnx"}
    assert all(" 2 entries " in line and str(own_cache / kind) in line for kind, line in lines.items())
    assert "of   4.0 GiB" in lines["decoded"]
    cleared = run_cli("cache", "clear", "--kind", "decoded", cwd=tmp_path)
    assert cleared.returncode == 0 and cleared.stdout == "decoded: deleted 2 entries\n"
    assert entries(own_cache, "decoded") == [] and len(entries(own_cache, "features")) == 2
    assert run_cli("cache", "clear", cwd=tmp_path).returncode == 0
    assert all(entries(own_cache, kind) == [] for kind in ("features", "audit", "onnx"))
    unknown = run_cli("cache", "clear", "--kind", "pictures", cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "error: unknown cache kind 'pictures'; choose from features, decoded, audit, onnx\n",
    )
    bad_limit = run_cli("cache", "info", cwd=tmp_path, env={"TLBENCH_CACHE_AUDIT_LIMIT": "lots"})
    assert bad_limit.returncode == 2 and len(bad_limit.stderr.splitlines()) == 1
    assert "TLBENCH_CACHE_AUDIT_LIMIT='lots' is not a size" in bad_limit.stderr
