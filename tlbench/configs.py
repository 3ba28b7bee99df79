"""Config lookup: where a config name, a grid file or a dataset x backbone recipe is found.

Every command that takes a config resolves it here, so ``dogs_vgg19``, ``dogs_vgg19.yaml`` and a path mean the
same thing everywhere: a path that exists wins, then ``./configs/``, then the configs shipped inside the package
(``tlbench/shipped_configs``, which the checkout's top-level ``configs`` links to), so a wheel install finds them too.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml

from tlbench.errors import TLBenchError

# A real folder, not only a Traversable: LightningCLI and jsonargparse are handed file paths (tlbench is never run
# from a zip archive).
CONFIGS = Path(str(resources.files("tlbench") / "shipped_configs"))
GRID_KEYS = ("data_dir", "datasets", "backbones", "recipes", "seeds", "overrides")


def _search_folders(subfolder: str = "") -> list[Path]:
    return [Path.cwd() / "configs" / subfolder, CONFIGS / subfolder]


def _find(value: str, subfolder: str = "") -> Path | None:
    if Path(value).is_file():
        return Path(value)
    for folder in _search_folders(subfolder):
        for candidate in (folder / value, folder / f"{value}.yaml", folder / Path(value).name):
            if candidate.is_file():
                return candidate
    return None


def resolve_config_path(value: str) -> str:
    """``dogs_vgg19.yaml`` or ``dogs_vgg19`` -> ``configs/dogs_vgg19.yaml`` when it is not a path that exists;
    a file that is not a YAML mapping is refused here, naming it (the parser's message would not)."""
    found = _find(value)
    if found is None:
        available = sorted(p.stem for p in CONFIGS.glob("*.yaml")) if CONFIGS.is_dir() else []
        raise TLBenchError(
            f"config '{value}' not found (looked in ./ and configs/); pass a YAML file's path or one of:"
            f" {', '.join(available) or 'none'}"
        )
    read_yaml_mapping(found)
    return str(found)


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with the value of every ``--config`` resolved by ``resolve_config_path``."""
    resolved, take_next = [], False
    for arg in argv:
        if take_next:
            resolved.append(resolve_config_path(arg))
            take_next = False
        elif arg == "--config":
            resolved.append(arg)
            take_next = True
        elif arg.startswith("--config="):
            resolved.append("--config=" + resolve_config_path(arg.split("=", 1)[1]))
        else:
            resolved.append(arg)
    return resolved


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file holding a mapping (an empty file is an empty one); anything else is one line naming the file."""
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise TLBenchError(f"cannot read {path}: {error.strerror or error}; pass a readable YAML file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise TLBenchError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from None
    if not isinstance(content, dict):
        raise TLBenchError(f"{path} holds a {type(content).__name__}, not a mapping of settings; fix the file")
    return content


def load_grid_file(path: str | Path) -> dict:
    """The keys of a grid YAML (a path, or a name in ``configs/grids/``); unknown keys are an error, not ignored."""
    found = _find(str(path), "grids")
    if found is None:
        raise TLBenchError(
            f"grid file '{path}' not found (also looked in {CONFIGS / 'grids'}); pass --grid PATH to a grid YAML"
        )
    content = read_yaml_mapping(found)
    unknown = sorted(set(content) - set(GRID_KEYS))
    if unknown:
        raise TLBenchError(
            f"{found}: unknown grid keys {unknown}; rename or remove them (keys: {', '.join(GRID_KEYS)})"
        )
    return content


def dataset_stem(name: str) -> str:
    """``birds10`` -> ``birds``: subsets named by their class count share the full dataset's recipe."""
    return re.sub(r"\d+$", "", name) or name


def recipe_args(dataset: str, backbone: str) -> list[str]:
    """``--config configs/<dataset>_<backbone>.yaml`` when the study ships that recipe (``birds10`` uses birds'),
    else ``--model configs/models/<backbone>.yaml``, else nothing (fit's defaults for any timm backbone)."""
    study = CONFIGS / f"{dataset_stem(dataset)}_{backbone}.yaml"
    model = CONFIGS / "models" / f"{backbone}.yaml"
    if study.is_file():
        return ["--config", str(study)]
    return ["--model", str(model)] if model.is_file() else []


def recipe_file(name: str) -> Path:
    """A named recipe: ``configs/recipes/<name>.yaml`` (model settings with a ``recipe:`` name), or a path."""
    found = _find(name, "recipes")
    if found is None:
        available = sorted(p.stem for p in (CONFIGS / "recipes").glob("*.yaml"))
        raise TLBenchError(
            f"recipe '{name}' not found in configs/recipes/; choose --recipes from: {', '.join(available) or 'none'}"
        )
    return found
