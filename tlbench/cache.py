"""The one home of tlbench's disk caches: where they live, how entries are keyed, stored, verified and evicted.

Four kinds, each a folder under the cache root (``$TLBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/tlbench``, else
``~/.cache/tlbench``): outside the data, which may be read-only or shared, and outside the project.

=========  ==================================================  =======  ==========================
kind       holds                                               limit    kept by
=========  ==================================================  =======  ==========================
features   a frozen backbone's features of a split             4 GiB    callbacks/feature_cache.py
decoded    images decoded and shrunk to the eval resize        4 GiB    data/decode_cache.py
audit      a data root's per-file scans                        256 MiB  data/audit.py
onnx       exported graphs of frozen networks                  2 GiB    models/engine.py
           and checked classifiers of checkpoints                       models/graph_classifier.py
=========  ==================================================  =======  ==========================

An entry is one file, ``<kind>/<key>.entry``: a header line ``tlbench-cache-1 <key> <sha256 of the payload>``,
then the payload, written whole through ``io.atomic_write`` (no fsync: an entry lost to a power cut is only
recomputed). It is used only after its header names the key asked for and the payload's sha256 matches, so a
truncated, corrupted, zeroed or tampered entry, or one copied over from another key, is a miss: it is removed, the
caller rebuilds it, and one line on stderr counts it (``tlbench: feature cache: 1 corrupt entry removed and
rebuilt``; a ``Cache`` that meets more says so again at 10, 100, ...): never used, never a traceback. Callers
deserialise only verified bytes (``get``'s ``decode``: ``torch.load`` never sees anything else), and a verified
payload that its reader still rejects counts as corrupt too.

Each kind is bounded (``TLBENCH_CACHE_<KIND>_LIMIT``: bytes, or a number with K, M, G or T, e.g. ``512M``; ``0``
keeps nothing): a hit refreshes the entry's mtime and ``prune`` deletes the least recently used entries until the
folder fits, so the limit counts the entries' bytes, as the decoded cache always did. A ``Cache`` prunes on its
first store and again after each sixteenth of its limit stored; the datamodule also prunes the decoded images when
it starts. Processes may read, store and prune one folder at once: an entry another process removed first is
skipped, never an error, and a reader sees a whole entry or none.

An unwritable folder (read-only, full, someone else's) never stops a run, because caches only save time: the
first store that fails prints one line naming the folder and the fix (set TLBENCH_CACHE_DIR to a writable folder)
and the run goes on without storing; entries already there are still read. Refusing to run (exit 2) would make a
read-only home or a full disk stop work that needs no cache.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tlbench.errors import TLBenchError
from tlbench.io import atomic_write

T = TypeVar("T")

# kind -> (what the log lines call it, default limit in bytes)
KINDS: dict[str, tuple[str, int]] = {
    "features": ("feature cache", 4 << 30),
    "decoded": ("decoded-image cache", 4 << 30),
    "audit": ("audit scan cache", 256 << 20),
    "onnx": ("ONNX graph cache", 2 << 30),
}
# The header's first word; a new entry layout changes it, and entries of the old one are then misses.
MAGIC = "tlbench-cache-1"
SUFFIX = ".entry"
KEY = re.compile(r"[A-Za-z0-9_.-]+")
# A Cache prunes again once it has stored 1/PRUNE_EVERY of its limit: pruning lists the whole folder, which for
# tens of thousands of decoded images is too slow to do after every store.
PRUNE_EVERY = 16
# An atomic write's temporary file (``.name.XXXX.tmp``) this old was left by a killed process and is evicted like
# an entry; a younger one is a write in progress and is left alone.
STALE_TEMPORARY_SECONDS = 3600
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

_unwritable_reported: set[Path] = set()  # cache roots already reported unwritable in this process


class CorruptEntry(ValueError):
    """An entry whose header does not name its key, or whose payload does not match the header's sha256."""


def cache_root() -> Path:
    """``$TLBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/tlbench``, else ``~/.cache/tlbench``."""
    if os.environ.get("TLBENCH_CACHE_DIR"):
        return Path(os.environ["TLBENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlbench"


def limit_variable(kind: str) -> str:
    return f"TLBENCH_CACHE_{kind.upper()}_LIMIT"


def parse_size(text: str) -> int | None:
    """Bytes in ``text`` (``4294967296``, ``512M``, ``4G``, ``1.5G``: powers of 1024), or None when it is not a size."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    return int(float(match[1]) * UNITS[match[2].upper()]) if match else None


def _limit(kind: str) -> int:
    variable = limit_variable(kind)
    text = os.environ.get(variable)
    if text is None:
        return KINDS[kind][1]
    size = parse_size(text)
    if size is None:
        raise TLBenchError(f"{variable}={text!r} is not a size; give bytes or a number with K, M, G or T (e.g. 4G)")
    return size


def _header(key: str, payload: bytes) -> bytes:
    return f"{MAGIC} {key} {hashlib.sha256(payload).hexdigest()}\n".encode()


def _verified_payload(key: str, data: bytes) -> bytes:
    """The payload of entry ``data`` when its header is the one ``put`` writes for ``key`` and this payload."""
    end = data.find(b"\n") + 1
    payload = data[end:]
    if not end or data[:end] != _header(key, payload):
        raise CorruptEntry(key)
    return payload


@dataclass(frozen=True)
class CacheInfo:
    kind: str
    folder: Path
    entries: int
    bytes: int
    limit: int


class Cache:
    """One kind's folder of verified entries under the cache root, bounded by its limit (see the module docstring).

    Cheap to make: a caller makes one where it needs it, so ``TLBENCH_CACHE_DIR`` and the limit are read then.
    """

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise TLBenchError(f"unknown cache kind {kind!r}; choose from {', '.join(KINDS)}")
        self.kind = kind
        self.label = KINDS[kind][0]
        self.folder = cache_root() / kind
        self.limit = _limit(kind)
        self._stored_since_prune = math.inf  # the first store prunes
        self._corrupt = 0  # corrupt entries this object met, for the log line

    def path(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise ValueError(f"cache keys are letters, digits, '_', '-' and '.': {key!r}")
        return self.folder / f"{key}{SUFFIX}"

    def get(self, key: str, decode: Callable[[bytes], T] = bytes) -> T | None:
        """``decode(payload)`` of the entry stored under ``key``, or None: missing, or corrupt (then removed and
        counted). A hit marks the entry recently used."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:  # missing, or not ours to read: a miss, nothing to remove
            return None
        try:
            value = decode(_verified_payload(key, data))
        except Exception:  # CorruptEntry, or what a reader raises on bad input (many types)
            self._remove_corrupt(path)
            return None
        try:
            os.utime(path)
        except OSError:
            pass  # a read-only cache, or pruned by another process since the read: the value is good either way
        return value

    def put(self, key: str, payload: bytes) -> bool:
        """Store ``payload`` under ``key`` atomically; False when the folder cannot be written (said in one line)."""
        header = _header(key, payload)

        def write(temporary: Path) -> None:
            with temporary.open("wb") as stream:
                stream.write(header)
                stream.write(payload)

        try:
            atomic_write(self.path(key), write, durable=False)
        except TLBenchError as error:
            self._report_unwritable(error.__context__)  # atomic_write raises it from the OSError
            return False
        self._stored_since_prune += len(header) + len(payload)
        if self._stored_since_prune > self.limit / PRUNE_EVERY:
            self.prune()
        return True

    def discard(self, key: str) -> None:
        """Remove ``key``'s entry if there is one (a graph that failed its parity check, say)."""
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError:
            pass

    def prune(self) -> int:
        """Delete least recently used entries until the folder holds at most ``limit`` bytes; returns how many
        this call deleted. Safe beside other processes pruning, storing or reading the same folder."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        deleted = 0
        for _, size, path in files:
            if total <= self.limit:
                break
            try:
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                pass  # another process evicted it first
            except OSError:
                break  # a folder we may not delete from: nothing else can go either
            total -= size
        self._stored_since_prune = 0
        return deleted

    def info(self) -> CacheInfo:
        files = self._files()
        return CacheInfo(self.kind, self.folder, len(files), sum(size for _, size, _ in files), self.limit)

    def clear(self) -> int:
        """Delete every entry; returns how many. A file that cannot be deleted is one ``TLBenchError`` line."""
        deleted = 0
        for _, _, path in self._files():
            try:
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError as error:
                raise TLBenchError(
                    f"could not delete {path}: {error.strerror or error}; give this user write access to"
                    f" {path.parent} or delete it by hand"
                ) from None
        return deleted

    def _files(self) -> list[tuple[float, int, Path]]:
        """``(mtime, size, path)`` of every file in the folder and below it, entries of older tlbench versions (in
        other layouts) included, so they are evicted and cleared too; not the temporary file of a write in
        progress."""
        stale = time.time() - STALE_TEMPORARY_SECONDS
        found = []
        for folder, _, names in os.walk(self.folder):
            for name in names:
                path = Path(folder, name)
                try:
                    stat = path.lstat()
                except FileNotFoundError:
                    continue  # removed by another process since the listing
                if not (name.startswith(".") and stat.st_mtime > stale):
                    found.append((stat.st_mtime, stat.st_size, path))
        return found

    def _remove_corrupt(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache: the entry stays, and stays a miss
        self._corrupt += 1
        if str(self._corrupt).rstrip("0") == "1":  # at 1, 10, 100, ...: a folder of bad entries is a few lines
            entries = "entry" if self._corrupt == 1 else "entries"
            print(
                f"tlbench: {self.label}: {self._corrupt} corrupt {entries} removed and rebuilt",
                file=sys.stderr,
                flush=True,
            )

    def _report_unwritable(self, cause: BaseException | None) -> None:
        """One line per cache root and process, whichever kind meets it first: the fix is the same for all."""
        root = self.folder.parent
        if root in _unwritable_reported:
            return
        _unwritable_reported.add(root)
        reason = getattr(cause, "strerror", None) or "not writable"
        print(
            f"tlbench: cannot write the cache folder {self.folder} ({reason}); running without caching there;"
            " set TLBENCH_CACHE_DIR to a writable folder",
            file=sys.stderr,
            flush=True,
        )


def cache_info() -> list[CacheInfo]:
    """Folder, entries, bytes and limit of every kind, for ``tlbench cache info``."""
    return [Cache(kind).info() for kind in KINDS]


def clear_caches(kind: str | None = None) -> dict[str, int]:
    """Delete every entry of ``kind`` (default: every kind); ``{kind: entries deleted}``."""
    return {name: Cache(name).clear() for name in ([kind] if kind else KINDS)}
