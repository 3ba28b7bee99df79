"""Loading trained models: run directories, checkpoints, refusing code payloads and truncated files."""

import os

import pytest
import torch

from tests.conftest import TINY_FIT_ARGS, run_cli
from tlbench.data.images import load_rgb
from tlbench.errors import TLBenchError
from tlbench.models.inference import Predictor
from tlbench.models.loading import load_trained


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import make_dataset

    root = tmp_path_factory.mktemp("loading")
    data = make_dataset(root / "tiny")
    result = run_cli("fit", "--data.root", str(data), *TINY_FIT_ARGS, "--model.finetune_epochs", "2", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root, data


def test_run_directory_and_checkpoint_give_the_same_predictions(trained_run):
    root, data = trained_run
    run = root / "lightning_logs" / "tiny_cnn1" / "version_0"
    from_run = load_trained(run)
    assert from_run.phase == "finetune" and from_run.classes == ["class_0", "class_1", "class_2"]
    assert from_run.preprocessing.input_size == 32
    head = load_trained(run, phase="head")
    assert head.phase == "head" and head.source.name.startswith("head-best")
    images = [load_rgb(p) for p in sorted(data.glob("*/*.png"))[::5]]
    direct = Predictor(load_trained(from_run.source)).probabilities(images)
    assert torch.allclose(Predictor(from_run).probabilities(images), direct)
    assert torch.allclose(direct.sum(dim=1), torch.ones(len(images)))


class Payload:
    def __reduce__(self):
        return (open, ("/tmp/tlbench_payload_ran", "w"))


def test_checkpoint_with_code_payload_is_refused_and_never_runs(tmp_path):
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"classes": ["a"]}, "evil": Payload()}, hostile)
    if os.path.exists("/tmp/tlbench_payload_ran"):
        os.remove("/tmp/tlbench_payload_ran")
    with pytest.raises(TLBenchError, match="refused"):
        load_trained(hostile)
    assert not os.path.exists("/tmp/tlbench_payload_ran")


def test_truncated_checkpoint_gives_one_line(trained_run, tmp_path):
    root, _ = trained_run
    source = next((root / "checkpoints" / "tiny_cnn1" / "version_0").glob("finetune-best-*.ckpt"))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(source.read_bytes()[:5000])
    with pytest.raises(TLBenchError, match="truncated"):
        load_trained(truncated)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(TLBenchError, match="not a tlbench run directory"):
        load_trained(tmp_path)
