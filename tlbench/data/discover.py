"""Find labelled images on disk and say how the data root is laid out.

The layouts (``detect_layout``):

* class folders: ``ROOT/<class>/<image>``, split here (stratified 70/20/10);
* split folders of class folders: ``ROOT/train`` with ``ROOT/val`` and/or ``ROOT/test`` (``ROOT/train/<class>/...``);
* a labels file: images anywhere under ROOT, listed with their class in ``--data.labels_csv`` (see split.py).

What cannot be told apart is refused with one line that asks which was meant, never guessed: a top level that mixes
split folders with other folders (a class named ``test`` beside ``cat`` and ``dog``?), a split-named folder holding
images instead of class folders (classes named ``train`` and ``test``?), two folders for one split (``val`` and
``validation``), and class names that differ only in case or Unicode form (``Cat``/``cat``): those merge on
case-insensitive file systems (macOS, Windows) and in most tools, so a dataset using them cannot travel. Spaces,
punctuation and non-ASCII letters in class names are kept as they are.
"""

from __future__ import annotations

import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tlbench.data.images import is_image_file
from tlbench.errors import TLBenchError

SPLIT_FOLDER_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "validate", "validation", "valid"),
    "test": ("test", "testing"),
}
SPLIT_OF_NAME = {name: split for split, names in SPLIT_FOLDER_NAMES.items() for name in names}
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx", ".ipynb_checkpoints"})
CLASS_FOLDERS = "class folders"
LABELS_FILE = "labels file"
EXTERNAL_LINKS_FLAG = "--data.allow_external_links true"


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``path`` is relative to the dataset root so split files travel between machines."""

    path: str
    label: str


@dataclass(frozen=True)
class Layout:
    """How a data root is organised: ``kind`` is ``class folders``, ``labels file`` or the split folders found
    (``train/val``, ``train/test``, ``train/val/test``), each split's folder in ``folders``."""

    kind: str
    folders: dict[str, Path] = field(default_factory=dict)


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


def name_key(name: str) -> str:
    """What two names must differ in to stay apart everywhere: case and Unicode form (NFC/NFD) are folded."""
    return unicodedata.normalize("NFC", name).casefold()


def check_class_names(names: Iterable[str], where: str) -> None:
    """Refuse class names equal but for case or Unicode form (``Cat`` and ``cat`` are one folder on macOS), and
    names that are not text: a folder name whose bytes are not UTF-8 cannot be shown in plots, reports or the
    served API, unlike a file name, which only travels through tlbench's CSVs (written losslessly)."""
    names = list(names)
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise TLBenchError(
                f"{where}: class name {os.fsencode(name)!r} is not UTF-8 text, which plots and reports cannot show:"
                " rename that folder (or label) in UTF-8"
            ) from None
    groups: dict[str, set[str]] = defaultdict(set)
    for name in names:
        groups[name_key(name)].add(name)
    clashes = [sorted(group) for group in groups.values() if len(group) > 1]
    if clashes:
        listing = "; ".join(" and ".join(f"'{name}'" for name in group) for group in sorted(clashes))
        raise TLBenchError(
            f"{where}: class names {listing} differ only in case or Unicode form, which merges them on"
            " case-insensitive file systems (macOS, Windows): rename or merge them"
        )


def _holds_images_directly(folder: Path) -> bool:
    """Images right in ``folder`` and no class folder beside them: a class folder, not a split folder."""
    entries = [entry for entry in folder.iterdir() if not is_ignored(entry.name)]
    return not any(entry.is_dir() for entry in entries) and any(is_image_file(entry) for entry in entries)


def _holds_images(folder: Path) -> bool:
    """Any image below ``folder``; stops at the first, so a large class folder costs little."""
    return any(is_image_file(path) for path in folder.rglob("*") if not is_ignored(path.name))


def detect_layout(root: Path) -> Layout:
    """The layout of the folders under ``root`` (a labels file is chosen by the caller, not detected)."""
    children = _class_folders(root)
    check_class_names([child.name for child in children], str(root))
    splits: dict[str, list[Path]] = defaultdict(list)
    for child in children:
        if child.name.lower() in SPLIT_OF_NAME:
            splits[SPLIT_OF_NAME[child.name.lower()]].append(child)
    if not splits:
        return Layout(CLASS_FOLDERS)
    # an annotations/ or meta/ folder beside the split folders is not data
    others = [child for child in children if child.name.lower() not in SPLIT_OF_NAME and _holds_images(child)]
    names = ", ".join(folder.name for split in SPLIT_FOLDER_NAMES for folder in splits.get(split, []))
    if others:
        listing = ", ".join(folder.name for folder in others[:5]) + (" ..." if len(others) > 5 else "")
        raise TLBenchError(
            f"{root} mixes split folders ({names}) with other folders of images ({listing}): split data or classes?"
            f" If split data, move {listing} into the split folders (<split>/<class>/<image>); if classes, rename"
            f" {names} (e.g. {splits[next(iter(splits))][0].name}_class)"
        )
    for split, folders in splits.items():
        if len(folders) > 1:
            raise TLBenchError(
                f"{root} has {' and '.join(f.name for f in folders)} folders: which one is the {split} split?"
                " rename or remove the other"
            )
    folders = {split: splits[split][0] for split in SPLIT_FOLDER_NAMES if split in splits}
    loose = [split for split, folder in folders.items() if _holds_images_directly(folder)]
    if loose and "train" in folders and "train" not in loose:
        unlabelled = folders[loose[0]]
        raise TLBenchError(
            f"{unlabelled} holds images without class folders while {folders['train'].name} has class folders: an"
            f" unlabelled {loose[0]} split cannot be scored; sort its images into class folders"
            f" ({unlabelled.name}/<class>/<image>) or move it out of {root} (predict reads it with --data.predict_dir)"
        )
    if loose:
        first = folders[loose[0]].name
        raise TLBenchError(
            f"{root}/{first} holds images, not class folders: are {names} splits or classes? If splits, put"
            f" their images in class folders ({first}/<class>/<image>); if classes, rename them (e.g. {first}_class)"
        )
    if "train" not in folders:
        raise TLBenchError(
            f"{root} has {names} but no train folder: add {root}/train/<class>/<image>, or pass the folder of class"
            f" folders itself as --data.root to split it 70/20/10"
        )
    if len(folders) == 1:
        raise TLBenchError(
            f"{root} has a train folder only: pass --data.root {folders['train']} to split its classes 70/20/10,"
            f" or add {root}/val or {root}/test"
        )
    for folder in folders.values():
        check_class_names([child.name for child in _class_folders(folder)], str(folder))
    return Layout("/".join(folders), folders)


def external_links(root: Path, paths: Iterable[str]) -> list[tuple[str, str]]:
    """``(path, target)`` of the files (relative to ``root``) that resolve outside it, through a link anywhere on
    their way: a dataset reaches into the rest of the disk only when ``--data.allow_external_links`` says so."""
    real_root = os.path.realpath(root)
    found = []
    for path in paths:
        real = os.path.realpath(root / path)
        if os.path.commonpath([real_root, real]) != real_root:
            found.append((path, real))
    return found


def refuse_external_links(root: Path, links: list[tuple[str, str]]) -> None:
    """One line for the whole dataset, however many files link out, naming the flag that allows them."""
    if links:
        path, target = links[0]
        raise TLBenchError(
            f"{len(links)} image file(s) under {root} are symlinks to outside it (e.g. {path} -> {target});"
            f" links that leave the data root are not followed unless asked: pass {EXTERNAL_LINKS_FLAG}"
        )


def check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        hint = " (download a dataset with 'python -m tlbench data download NAME' or pass --data.root DIR)"
        raise TLBenchError(f"data root {root} is not a folder{hint}")
    return root
