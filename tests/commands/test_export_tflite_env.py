"""The TFLite export test, run where the tflite extra is installed: ``.venv-tflite`` (``bash .ci/tflite-env``,
which CI runs) when this environment lacks litert-torch. The extra cannot live in the main environment (its pins
downgrade pydantic under FastAPI), so this is the one place a second interpreter is the point."""

import importlib.util
import os
import re
import subprocess

import pytest

from tests.conftest import REPO

TFLITE_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
TFLITE_TEST = (
    "tests/commands/test_export.py::test_tflite_matches_pytorch_through_the_litert_interpreter_at_any_batch_size"
)


@pytest.mark.skipif(
    importlib.util.find_spec("litert_torch") is not None, reason="litert-torch is installed here: the test runs here"
)
@pytest.mark.skipif(not TFLITE_PYTHON.exists(), reason="no .venv-tflite beside the checkout (bash .ci/tflite-env)")
def test_tflite_export_passes_in_the_tflite_environment(tmp_path):
    command = [str(TFLITE_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t")]
    done = subprocess.run(
        [*command, TFLITE_TEST],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    # "1 passed", not a skip: a .venv-tflite without the extra must fail here.
    passed = done.returncode == 0 and re.search(r"^1 passed", done.stdout, re.M)
    assert passed, done.stdout[-4000:] + done.stderr[-2000:]
