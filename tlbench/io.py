"""Crash-safe writes, the one home of every file tlbench writes: JSON, CSV, PNG, checkpoints and caches.

Each write goes to a temporary file in the destination folder, is flushed and (for results) fsynced, then
renamed over the destination (atomic on POSIX): a reader sees the old file or the new one, never a half-written
metrics file, prediction table or plot, and a failure (disk full, kill) leaves the previous file intact.

CSV cells are neutralised against formula injection (OWASP): a string a spreadsheet would run as a formula
(``=``, ``+``, ``-``, ``@``, tab or carriage return first; file, folder and class names are the user's) is written
with a leading ``'``, and ``read_csv`` takes it off again, so tlbench reads back exactly what it wrote.

Files get the mode ``open()`` would give them (0666 less the umask): ``mkstemp`` creates owner-only files,
which would make results unreadable to the group that shares a run directory or serves a report.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from tlbench.errors import TLBenchError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(base: int = 0o666) -> int:
    """The mode ``open()`` (``base`` 0o666) or ``mkdir()`` (0o777) gives a new entry: ``base`` less the umask."""
    return base & ~_umask()


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s contents to disk."""
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def fsync_folder(path: str | Path) -> None:
    """Flush ``path``'s entries to disk: a rename is only durable once the folder holding it is synced."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_replace(source: str | Path, destination: str | Path) -> None:
    """Flush ``source`` to disk, rename it over ``destination`` (atomic on POSIX), then flush the folder.

    Without the folder sync a power cut after the rename can bring back the old entry, or none at all.
    """
    fsync_file(source)
    os.replace(source, destination)
    fsync_folder(Path(destination).parent)


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``, on error it is removed.

    ``durable=False`` skips the fsyncs, for caches: a reader never sees a partial file, and an entry lost to a
    power cut is only recomputed. A failing write (disk full, permission) becomes one ``TLBenchError`` line.
    The mode is set after the write: writers such as safetensors replace the path with their own owner-only file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise TLBenchError(f"could not write {path}: {error.strerror or error}; choose another output folder") from None
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, umask_mode())
        if durable:
            fsync_replace(temporary, path)
        else:
            os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise TLBenchError(
            f"could not write {path}: {error.strerror or error}; free disk space or choose another output folder"
        ) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` (see ``atomic_path``)."""
    with atomic_path(path, durable) as temporary:
        write(temporary)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: dict) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# What makes a spreadsheet (Excel, LibreOffice, Google Sheets) evaluate a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _formula_after_quotes(value: object) -> bool:
    """A string that, once its leading quotes are set aside, a spreadsheet would run as a formula."""
    return isinstance(value, str) and value.lstrip("'").startswith(FORMULA_STARTS)


def neutralise_csv_cell(value: object) -> object:
    """``value`` with a ``'`` in front when it is a string a spreadsheet would run as a formula, else unchanged.

    A string that already has quotes before a formula start gets one more, so ``restore_csv_cell`` can tell the
    added quote from the name's own and the round trip stays lossless for every string.
    """
    return f"'{value}" if _formula_after_quotes(value) else value


def restore_csv_cell(value: object) -> object:
    """The inverse of ``neutralise_csv_cell``: one leading ``'`` off a string whose quotes precede a formula start."""
    return value[1:] if _formula_after_quotes(value) and value.startswith("'") else value


def _map_text(table: pd.DataFrame, cell: Callable[[object], object]) -> pd.DataFrame:
    """``cell`` applied to the header, the index and every text column; numbers (``-0.5``) are never text."""
    table = table.rename(columns=cell, index=cell)
    for column in table.select_dtypes(include=["object", "string"]).columns:
        table[column] = table[column].map(cell)
    return table


def write_csv(path: str | Path, table: pd.DataFrame, **to_csv) -> Path:
    """``table`` as UTF-8 CSV, text cells neutralised; ``to_csv`` options default to no index column.

    A file name that is not UTF-8 (Python holds its undecodable bytes as surrogate escapes, ``img_\\udcff.png``) is
    written as its own bytes (``surrogateescape``), so ``read_csv`` gives back the path that opens the file.
    """
    safe = _map_text(table, neutralise_csv_cell)
    options = {"index": False, "encoding": "utf-8", "errors": "surrogateescape", **to_csv}
    return atomic_write(path, lambda tmp: safe.to_csv(tmp, **options))


def read_csv(path: str | Path, **options) -> pd.DataFrame:
    """A CSV that ``write_csv`` wrote, its neutralised cells restored and its non-UTF-8 bytes back as the surrogate
    escapes they were written from; ``options`` go to ``pandas.read_csv``."""
    table = pd.read_csv(path, **{"encoding": "utf-8", "encoding_errors": "surrogateescape", **options})
    return _map_text(table, restore_csv_cell)
