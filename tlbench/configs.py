"""Where fit configs are found: a path as given, else a bare name (``dogs_vgg19``) in ``./configs`` or the repo's."""

from __future__ import annotations

from pathlib import Path

from tlbench.errors import TLBenchError

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(value: str) -> str:
    """``dogs_vgg19.yaml`` or ``dogs_vgg19`` -> ``configs/dogs_vgg19.yaml`` when it is not a path that exists."""
    if Path(value).exists():
        return value
    for folder in (Path.cwd() / "configs", REPO_CONFIGS):
        for candidate in (folder / value, folder / f"{value}.yaml"):
            if candidate.is_file():
                return str(candidate)
    available = sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml")) if REPO_CONFIGS.is_dir() else []
    raise TLBenchError(f"config '{value}' not found (looked in ./ and configs/);"
                       f" available: {', '.join(available) or 'none'}")
