"""The built wheel works on its own: configs, grids and recipes ship inside it, found from any working folder.

The wheel and the sdist are built from this checkout and pass ``twine check``; the wheel is installed into a fresh
virtual environment in a temporary folder outside the repository, and the commands run there with no ``PYTHONPATH``.
The fresh environment reuses this one's dependencies through links (reinstalling torch would take minutes), never
this checkout or its editable install: a test asserts ``tlbench`` is imported from the new environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_FIT_ARGS, make_dataset


@dataclass
class Installed:
    cwd: Path  # an empty folder outside the repository, with generated data under data/
    bin: Path  # the fresh environment's scripts folder: python and the tlbench console script
    dist: Path

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "tlbench"), *args],
            cwd=self.cwd,
            env=outside_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )


def outside_env() -> dict:
    """This environment minus ``PYTHONPATH``: a checkout on the path would hide a wheel that failed to install."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=outside_env(), **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def dependencies_without_tlbench(folder: Path) -> Path:
    """This environment's site-packages as links, minus tlbench's own (editable) install."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("tlbench", "__editable__")) and entry.suffix != ".pth":
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    dist = root / "dist"
    checked([sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)])
    venv = root / "venv"
    checked([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(
        checked([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (site / "dependencies.pth").write_text(f"{dependencies_without_tlbench(root / 'dependencies')}\n")
    wheel = next(dist.glob("*.whl"))
    checked([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)])
    cwd = root / "work"
    for name, classes in (("birds10", 3), ("leaves3", 2)):
        make_dataset(cwd / "data" / name, classes=classes)
    return Installed(cwd, venv / "bin", dist)


def test_the_wheel_and_sdist_pass_twine_check(installed):
    files = sorted(str(path) for path in installed.dist.iterdir())
    assert sorted(Path(name).suffix for name in files) == [".gz", ".whl"]
    checked([sys.executable, "-m", "twine", "check", "--strict", *files])


def test_the_installed_package_is_the_wheel_with_its_type_marker(installed):
    where = checked(
        [
            str(installed.bin / "python"),
            "-c",
            "import tlbench, importlib.resources as r; "
            "print(tlbench.__file__); print(r.files('tlbench').joinpath('py.typed').is_file())",
        ],
        cwd=installed.cwd,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(installed.bin.parent) and where[1] == "True"


def test_a_shipped_config_resolves_by_name_outside_the_checkout(installed):
    result = installed.run("fit", "--config", "birds_efficientnet_lite2.yaml", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backbone: efficientnet_lite2" in result.stdout


def test_the_quick_grid_lists_its_cells_from_the_shipped_grid_file(installed):
    result = installed.run("grid", "--grid", "quick", "--data_dir", "data", "--list", "true")
    assert result.returncode == 0, result.stderr[-2000:]
    cells = result.stdout.splitlines()
    assert len(cells) == 12 and cells[0].split()[:2] == ["1", "birds10_efficientnet_lite0_seed0"], cells


def test_a_tiny_fit_runs_from_the_wheel(installed):
    result = installed.run("fit", "--data.root", "data/leaves3", *TINY_FIT_ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((installed.cwd / "lightning_logs" / "leaves3_cnn1" / "version_0" / "metrics.json").read_text())
    assert metrics["dataset"] == "leaves3" and 0 <= metrics["phases"]["finetune"]["test_acc"] <= 1
