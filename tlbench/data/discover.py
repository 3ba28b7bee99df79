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

import errno
import os
import stat
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
SKIP_BAD_FLAG = "--data.skip_bad_images true"
SPECIAL_FILES = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


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


def real_path(path: Path) -> Path:
    """Where ``path`` really is; unlike ``Path.resolve`` on Python 3.11 it does not raise on a symlink loop."""
    return Path(os.path.realpath(path))


def entry_problem(path: Path, real_root: Path, allow_external_links: bool = False) -> str | None:
    """Why the entry ``path`` of a data root (whose real path is ``real_root``) cannot be read as an image; None
    for a regular file, or a folder to walk into.

    The one rule for what is a bad file, shared by discovery (which folders to walk), ``data info``, ``data audit``
    and fit's pre-flight, so all of them list and refuse the same entries: a symlink leaving the root (unless
    ``allow_external_links``), a dangling link, a link loop, a folder link to a folder that contains it (walking it
    would never end), and anything but a regular file (reading a FIFO blocks forever; sockets and devices are no
    images).
    """
    real = real_path(path)
    if not allow_external_links and not real.is_relative_to(real_root):
        return f"symlink to a {'folder' if real.is_dir() else 'file'} outside the data root ({real})"
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop"
        return "broken symlink (target missing)" if path.is_symlink() else "file not found"
    if stat.S_ISDIR(mode):
        if any(real == real_path(parent) for parent in path.absolute().parents):
            return "symlink loop (links to a folder that contains it)"
        return _unlistable(path)
    if not stat.S_ISREG(mode):
        return f"not a regular file (a {SPECIAL_FILES.get(stat.S_IFMT(mode), 'special file')})"
    return None


def _unlistable(folder: Path) -> str | None:
    """Why ``folder``'s entries cannot be listed (no read or search permission), else None."""
    try:
        os.scandir(folder).close()
    except OSError as error:
        return f"folder cannot be read ({error.strerror or error})"
    return None


def files_under(folder: Path, root: Path | None = None, allow_external_links: bool = False) -> list[Path]:
    """Every entry below ``folder``, recursively and sorted, but the folders walked into and hidden and OS-generated
    entries.

    Folder links are walked where ``entry_problem`` allows (inside ``root``, default ``folder``; anywhere with
    ``allow_external_links``). Every other entry is listed whatever it is, a dangling or looping link, a FIFO, a
    folder link that cannot be walked, so that callers report it (``entry_problem`` says why), never drop it
    silently. ``folder`` itself is listed when it cannot be walked.
    """
    real_root = real_path(root or folder)
    found = []

    def visit(path: Path) -> None:
        if path.is_dir() and entry_problem(path, real_root, allow_external_links) is None:
            for entry in sorted(path.iterdir()):
                if not is_ignored(entry.name):
                    visit(entry)
        else:
            found.append(path)

    visit(folder)
    return found


def images_under(folder: Path) -> list[Path]:
    return [path for path in files_under(folder) if is_image_file(path)]


def is_data_entry(path: Path) -> bool:
    """Whether a listed entry of a class folder is data: an image by its extension (readable or not), or a folder
    link that could not be walked (``files_under``), which may hold images and so is a bad file, not ignored."""
    return is_image_file(path) or path.is_dir()


def class_folder_entries(top: Path, root: Path, allow_external_links: bool = False) -> list[tuple[str, Path]]:
    """``(class, entry)`` for every entry ``files_under`` lists below the class folders of ``top`` (the data root
    ``root`` or one of its split folders): what ``fit``, ``data info`` and ``data audit`` all start from."""
    return [
        (folder.name, path)
        for folder in _class_folders(top)
        for path in files_under(folder, root, allow_external_links)
    ]


def scan_class_folders(root: Path, base: Path | None = None, allow_external_links: bool = False) -> list[Sample]:
    """Every data entry below ``root/<class>/`` (recursively), labelled with its class folder name; paths relative
    to ``base`` (default ``root``), the data root, inside which folder links are followed."""
    base = base or root
    entries = class_folder_entries(root, base, allow_external_links)
    return [Sample(path.relative_to(base).as_posix(), label) for label, path in entries if is_data_entry(path)]


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
        hint = " (download a dataset with 'tlbench data download NAME' or pass --data.root DIR)"
        raise TLBenchError(f"data root {root} is not a folder{hint}")
    try:
        os.fsencode(root.absolute()).decode("utf-8")
    except UnicodeDecodeError:
        raise TLBenchError(
            f"data root {root} has a name that is not UTF-8, which run folders, TensorBoard and reports cannot hold;"
            " rename it"
        ) from None
    problem = _unlistable(root)
    if problem:
        raise TLBenchError(f"data root {root}: {problem}; give this user read and search access to it (chmod u+rx)")
    return root
