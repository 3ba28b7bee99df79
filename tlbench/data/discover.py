"""Find labelled images on disk: a folder of class folders, or an already split train/val[/test] layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlbench.data.images import is_image_file
from tlbench.errors import TLBenchError

SPLIT_FOLDER_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "validate", "validation", "valid"),
    "test": ("test", "testing"),
}
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx", ".ipynb_checkpoints"})


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``path`` is relative to the dataset root so split files travel between machines."""

    path: str
    label: str


def is_ignored(name: str) -> bool:
    """Hidden and OS-generated entries (``.DS_Store``, ``._x.jpg``, ``__MACOSX``) are never data or classes."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not is_ignored(p.name))


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``, recursively and sorted, except hidden and OS-generated ones."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative_parts = path.relative_to(folder).parts
        if any(is_ignored(part) for part in relative_parts):
            continue
        if path.is_file():
            found.append(path)
    return found


def images_under(folder: Path) -> list[Path]:
    return [path for path in files_under(folder) if is_image_file(path)]


def scan_class_folders(root: Path, base: Path | None = None) -> list[Sample]:
    """Every image below ``root/<class>/`` (recursively), labelled with its class folder name."""
    base = base or root
    samples = []
    for folder in _class_folders(root):
        samples += [Sample(path.relative_to(base).as_posix(), folder.name) for path in images_under(folder)]
    return samples


def find_split_folders(root: Path) -> dict[str, Path]:
    """``{"train": root/train, "val": root/validate, ...}`` when ``root`` is already split, else ``{}``."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    found = {}
    for split, names in SPLIT_FOLDER_NAMES.items():
        for name in names:
            if name in children:
                found[split] = children[name]
                break
    return found if {"train", "val"} <= found.keys() else {}


def check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        hint = " (download a dataset with 'python -m tlbench data download NAME' or pass --data.root DIR)"
        raise TLBenchError(f"data root {root} is not a folder{hint}")
    return root
