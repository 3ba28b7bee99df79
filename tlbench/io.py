"""Crash-safe writes: a reader never sees a half-written metrics file, prediction table or manifest.

Each write goes to a temporary file in the destination folder, is flushed and fsynced, then renamed over the
destination (atomic on POSIX). A failure (disk full, kill) leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tlbench.errors import TLBenchError


def cache_dir(kind: str) -> Path:
    """``$TLBENCH_CACHE_DIR/<kind>`` (default ``~/.cache/tlbench/<kind>``): caches live outside the data, which
    may be read-only or shared, and outside the project."""
    base = os.environ.get("TLBENCH_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlbench"
    return Path(base) / kind


def fsync_replace(source: str | Path, destination: str | Path) -> None:
    """Flush ``source`` to disk, then rename it over ``destination`` (atomic on POSIX)."""
    with open(source, "rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(source, destination)


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call ``write(temporary_path)``, fsync it and move it to ``path``; the old file survives any failure.

    ``durable=False`` skips the fsync, for caches: a reader never sees a partial file, and an entry lost to a
    power cut is only recomputed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        if durable:
            fsync_replace(temporary, path)
        else:
            os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise TLBenchError(f"could not write {path}: {error.strerror or error}; free disk space or choose another output folder") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: dict) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, table: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
