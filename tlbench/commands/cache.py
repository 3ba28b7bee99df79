"""``tlbench cache info`` and ``cache clear [--kind K]``: what tlbench keeps on disk, and getting it back."""

from __future__ import annotations

from tlbench.cache import cache_info, clear_caches, limit_variable


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def info() -> None:
    """Print each cache's folder, entries, size and limit (a limit is set with TLBENCH_CACHE_<KIND>_LIMIT)."""
    for item in cache_info():
        print(
            f"{item.kind:<9} {item.entries:>7} entries {_size(item.bytes):>10} of {_size(item.limit):>9}"
            f"  {item.folder}  ({limit_variable(item.kind)})"
        )


def clear(kind: str | None = None) -> None:
    """Delete the cached entries of every kind, or of one: features, decoded, audit or onnx.

    Args:
        kind: only this cache (default: all of them).
    """
    for name, deleted in clear_caches(kind).items():
        print(f"{name}: deleted {deleted} entries")
