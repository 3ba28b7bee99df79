"""classify without torch: once a checkpoint's classifier graph has passed its check against torch, later classify
runs of that checkpoint run the graph alone (models/graph_classifier.py), and give the same answers."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import copy_run, run_cli
from tlbench.cache import Cache
from tlbench.classify import classify_files
from tlbench.models.graph_classifier import GraphModel, cached_classifier, checkpoint_of, classifier_key
from tlbench.models.loading import TrainedModel


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own: the first classify below must find no entry."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(folder))
    return folder


def images_of(run: Path, count: int = 6) -> list[str]:
    return [str(path) for path in sorted((run.parents[2] / "tiny").rglob("*.png"))[:count]]


def test_the_second_classify_of_a_checkpoint_runs_the_graph_the_first_checked_and_answers_the_same(
    tiny_run, cache_dir, tmp_path
):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    inputs = [*images_of(tiny_run), str(broken)]
    first = classify_files(tiny_run, inputs, top_k=2, batch_size=4)
    second = classify_files(tiny_run, inputs, top_k=2, batch_size=4)
    assert isinstance(first.trained, TrainedModel) and isinstance(second.trained, GraphModel)
    for field in ("classes", "preprocessing", "backbone", "phase", "source"):
        assert getattr(second.trained, field) == getattr(first.trained, field), field
    assert first.failed == second.failed == 1
    pd.testing.assert_frame_equal(second.table, first.table, check_exact=False, atol=1e-6, rtol=0)
    # --engine torch is torch's answer, whatever the cache holds
    assert isinstance(classify_files(tiny_run, inputs[:1], engine="torch").trained, TrainedModel)


def test_the_entry_belongs_to_the_checkpoints_bytes_and_a_bad_one_is_removed(tiny_run, cache_dir, tmp_path):
    copy = copy_run(tiny_run, tmp_path / "copy")
    image = images_of(tiny_run, 1)
    classify_files(tiny_run, image)
    checkpoint = checkpoint_of(copy, None)
    assert cached_classifier(copy).source == checkpoint  # the same bytes elsewhere: the same entry
    other = next(path for path in checkpoint.parent.glob("*.ckpt") if path != checkpoint)
    shutil.copyfile(other, checkpoint)  # retrained in place: another model under the same name
    assert cached_classifier(copy) is None
    assert isinstance(classify_files(copy, image).trained, TrainedModel)
    # An entry whose sha256 matches but whose graph ONNX Runtime cannot load is removed, never run.
    key = classifier_key(checkpoint)
    graphs = Cache("onnx")
    manifest = graphs.get(key).partition(b"\n")[0]
    graphs.put(key, manifest + b"\nnot an ONNX graph")
    assert cached_classifier(copy) is None and not graphs.path(key).exists()


def test_classify_through_the_cli_says_the_same_with_and_without_torch(tiny_run, cache_dir, tmp_path):
    image = images_of(tiny_run, 2)
    first, second = (run_cli("classify", str(tiny_run), *image, "--top_k", "3", cwd=tmp_path) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert second.stdout == first.stdout and second.stderr == first.stderr == ""
