"""One tiny trained run shared by the export and serve tests (training is the slow part)."""

from pathlib import Path

import pytest

from tests.conftest import TINY_FIT_ARGS, make_dataset, run_tlbench


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """``lightning_logs/tiny_cnn1/version_0`` of a cnn1 fit on generated data, through the real CLI."""
    root = tmp_path_factory.mktemp("tiny_run")
    data = make_dataset(root / "tiny")
    result = run_tlbench("fit", "--data.root", str(data), *TINY_FIT_ARGS, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "lightning_logs" / "tiny_cnn1" / "version_0"
