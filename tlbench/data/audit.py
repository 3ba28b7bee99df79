"""Dataset audit: every file decoded once, bad files and duplicates reported, nothing dropped silently.

``audit(root)`` walks a data root the way discovery does (class folders, or ``train/ val/ [test/]`` folders of
class folders; hidden and OS files ignored; or the files a labels file lists) and reports

* bad files ``(path, reason)``: the reasons of ``load_rgb`` (empty, not an image, unsupported format, possible
  decompression bomb, too small, cannot decode), plus symlinks that leave the data root, broken symlinks,
  symlink loops and entries that are not regular files (FIFOs, sockets, devices): ``discover.entry_problem``, the
  one rule ``fit`` and ``data info`` apply too. Symlinks inside the root are followed, because linking images
  into class folders is a common way to build a dataset; links out of it are refused unless
  ``allow_external_links`` (``--data.allow_external_links true``, for a subset linked from a larger copy),
  because a dataset must not reach into the rest of the disk unasked; a folder that links to one of its own
  parents is reported once and not walked again, so loops end.
* duplicate groups: byte-identical files (sha256) and near-duplicates (64-bit DCT perceptual hash within
  ``near_threshold`` bits: a resized or recompressed copy), each group's ``kind`` saying whether it stays in one
  class, spans classes (conflicting labels) or spans train/val/test (leakage that inflates scores).

``preflight(root, table, ...)`` runs the same checks on a split table right before training and either refuses
with a one-line fix or drops what it was told to drop and lists it.

Scan results are cached per data root in the ``audit`` kind of ``tlbench/cache.py`` (never inside the data root,
which may be read-only; an entry is verified before use), per file by its path and reused only while its size,
mtime_ns, ctime_ns and inode all match (the rule git and DVC use): auditing an unchanged dataset again decodes
nothing, and a file overwritten in place with its size and mtime restored (a copy tool, ``touch -d``) still
changes ctime, so it is scanned again rather than seen as the old image.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tlbench.cache import Cache
from tlbench.data.discover import (
    SKIP_BAD_FLAG,
    Layout,
    check_root,
    class_folder_entries,
    detect_layout,
    entry_problem,
    is_data_entry,
    is_ignored,
    real_path,
)
from tlbench.data.images import MIN_SIDE, ImageLoadError, image_size, load_rgb
from tlbench.data.split import (
    DEFAULT_SELECT_FRACTION,
    DEFAULT_VAL_FRACTION,
    UnsplittableError,
    complete_split,
    labelled_rows,
)
from tlbench.errors import TLBenchError
from tlbench.io import write_csv
from tlbench.outputs import dataset_name, default_output

# Hamming distance (of 64 bits) at or below which two images count as near-duplicates. On the bundled photo sets
# a resized, recompressed or burst-shot copy is 0-4 bits away while different photos of the same species start
# at 6 (leaves on a white background).
NEAR_THRESHOLD = 4
# The audit decodes at most this size: the whole file is still read (truncation is found), JPEGs at 1/8 scale.
DECODE_SIDE = 256
HASH_SIDE = 32
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
CACHE_VERSION = 3
# Rows of the distance matrix computed at once: memory stays near CHUNK x n x 16 bytes however large the dataset.
CHUNK = 64

_POPCOUNT8 = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)
_DCT = np.cos(np.pi * (2 * np.arange(HASH_SIDE)[None, :] + 1) * np.arange(HASH_SIDE)[:, None] / (2 * HASH_SIDE))


@dataclass(frozen=True)
class AuditedFile:
    """One image file of the dataset; ``split`` is ``""`` when no split is known."""

    path: str
    label: str
    split: str = ""


@dataclass(frozen=True)
class Scan:
    """What decoding one file found: its hashes when usable, else the reason it is not."""

    sha256: str | None = None
    phash: int | None = None
    reason: str | None = None
    size: tuple[int, int] | None = None  # (width, height) as stored, for the small-image warning


@dataclass
class DuplicateGroup:
    """Files that are the same picture; ``members`` sorted so the first is the copy to keep (train first)."""

    match: str  # "exact" (same bytes) or "near" (same picture, different bytes)
    members: list[AuditedFile]

    @property
    def kind(self) -> str:
        """``within-class``, or ``across-classes`` and/or ``across-splits`` joined by ``+``."""
        kinds = []
        if len({m.label for m in self.members}) > 1:
            kinds.append("across-classes")
        if len({m.split for m in self.members} - {""}) > 1:
            kinds.append("across-splits")
        return "+".join(kinds) or "within-class"

    def describe(self) -> str:
        listing = ", ".join(f"{m.path} ({m.label}{', ' + m.split if m.split else ''})" for m in self.members)
        return f"{self.match} {self.kind}: {listing}"


@dataclass
class Listing:
    """What a walk of the data root found: its data entries (whether readable is the scan's to say) and the
    entries that are not data."""

    files: list[AuditedFile] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class AuditResult:
    root: Path
    files: list[AuditedFile]
    bad: list[tuple[str, str]]
    duplicates: list[DuplicateGroup]
    ignored: list[tuple[str, str]]

    @property
    def clean(self) -> bool:
        return not self.bad and not self.duplicates

    def usable_counts(self) -> dict[str, dict[str, int]]:
        """``{label: {split: n}}`` of files that decoded, for the per-class summary."""
        bad = {path for path, _ in self.bad}
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for file in self.files:
            if file.path not in bad:
                counts[file.label][file.split] += 1
        return counts


@dataclass
class DatasetAudit:
    """``audit_dataset``'s outcome: the audit, the layout line (which split's leakage it checked) and the two CSVs
    it wrote."""

    result: AuditResult
    layout: str
    bad_files_csv: Path
    duplicates_csv: Path


@dataclass
class PreflightResult:
    """``table`` is what trains, with a ``sha256`` column: the run's manifest, compared again on resume;
    ``sizes`` the (width, height) of each of its images."""

    table: pd.DataFrame
    skipped: list[tuple[str, str]]
    problems: list[str]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    duplicates_dropped: int = 0

    def summary(self, report_dir: str | Path | None) -> str:
        """The one console line about the data: what trains, what was set aside, and where the details are
        (one warning per duplicate pair drowned a fit's output)."""
        counts = self.table.label.value_counts()
        unusable = len(self.skipped) - self.duplicates_dropped
        line = (
            f"{len(self.table)} images in {len(counts)} classes ({counts.min()} to {counts.max()} per class);"
            f" {unusable} unusable file(s) skipped, {self.duplicates_dropped} duplicate(s) across splits dropped,"
            f" {len(self.problems)} duplicate group(s) within a split kept"
        )
        if report_dir is not None and (self.skipped or self.problems):
            line += f" (see {Path(report_dir) / 'bad_files.csv'} and duplicates.csv)"
        return line


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash: signs of the 8x8 lowest DCT frequencies of a 32x32 grey thumbnail against their median.

    Low frequencies survive resizing and JPEG recompression, which change the bytes (and the sha256) but not the
    picture; on real photo sets it separates different photos better than the simpler dHash.
    """
    grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term is the mean brightness, not structure
    return int(np.packbits(bits).view(">u8")[0])


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def list_dataset(root: Path, layout: Layout | None = None, allow_external_links: bool = False) -> Listing:
    """Every data entry below the class folders of ``root`` (or of its train/val/test folders), labelled and split,
    as discovery lists them for ``fit`` (``class_folder_entries``)."""
    found = Listing()
    split_folders = (layout or detect_layout(root)).folders
    if split_folders:
        for entry in sorted(root.iterdir()):
            if not is_ignored(entry.name) and entry not in split_folders.values():
                found.ignored.append((_relative(root, entry), "outside the train/val/test folders"))
    for split, top in split_folders.items() or [("", root)]:
        for entry in sorted(top.iterdir()):
            if not is_ignored(entry.name) and not entry.is_dir():
                found.ignored.append((_relative(root, entry), "not in a class folder"))
        for label, path in class_folder_entries(top, root, allow_external_links):
            if is_data_entry(path):
                found.files.append(AuditedFile(_relative(root, path), label, split))
            else:
                found.ignored.append((_relative(root, path), "not an image file extension"))
    return found


def _cache_key(root: Path) -> str:
    """One cache entry per data root, by its real path: every route to the same folder shares it."""
    return hashlib.sha256(os.fsencode(real_path(root))).hexdigest()[:16]


def cache_path(root: Path) -> Path:
    """Where the scans of ``root`` are cached: outside the data, which may be read-only or shared."""
    return Cache("audit").path(_cache_key(root))


def _cache_settings(min_side: int) -> dict:
    """Everything besides the file that a cached scan depends on; a change invalidates the whole cache."""
    return {"version": CACHE_VERSION, "min_side": min_side, "decode_side": DECODE_SIDE}


def _identity(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a cached scan to hold: size and mtime alone can be restored over new content."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _scan_file(full: Path, min_side: int) -> Scan:
    try:
        image = load_rgb(full, max_side=DECODE_SIDE, min_side=min_side)
    except ImageLoadError as error:
        return Scan(reason=str(error))
    with full.open("rb") as stream:
        sha256 = hashlib.file_digest(stream, "sha256").hexdigest()
    return Scan(sha256, perceptual_hash(image), size=image_size(full))


def scan_files(
    root: Path, paths: list[str], min_side: int = MIN_SIDE, progress: bool = False, allow_external_links: bool = False
) -> dict[str, Scan]:
    """``{path: Scan}`` for files relative to ``root``, decoding only those changed since the cached scan.

    ``progress`` shows a bar on stderr: the first scan of a large dataset decodes every file and takes minutes.
    ``allow_external_links`` reads files linked from outside the root instead of reporting them.
    """
    real_root = real_path(root)
    cache, key = Cache("audit"), _cache_key(root)
    stored = cache.get(key, json.loads)
    cached = stored["files"] if stored and stored.get("settings") == _cache_settings(min_side) else {}
    scans: dict[str, Scan] = {}
    for path in tqdm(paths, desc=f"scanning {root.name}", unit="file", disable=not progress):
        full = root / path
        reason = entry_problem(full, real_root, allow_external_links)
        if reason:
            scans[path] = Scan(reason=reason)
            continue
        identity = _identity(full.stat())
        entry = cached.get(path)
        if isinstance(entry, list) and len(entry) == len(identity) + 5 and entry[: len(identity)] == identity:
            sha256, phash, reason, width, height = entry[len(identity) :]
            size = None if width is None else (width, height)
            scans[path] = Scan(sha256, None if phash is None else int(phash, 16), reason, size)
            continue
        scan = _scan_file(full, min_side)
        scans[path] = scan
        phash = None if scan.phash is None else f"{scan.phash:016x}"
        cached[path] = [*identity, scan.sha256, phash, scan.reason, *(scan.size or (None, None))]
    kept = {path: entry for path, entry in cached.items() if os.path.lexists(root / path)}
    cache.put(key, json.dumps({"settings": _cache_settings(min_side), "files": kept}).encode())
    return scans


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each ``uint64``: numpy 2's native popcount, else a byte lookup table (about ten times slower)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    return _POPCOUNT8[values.view(np.uint8)].reshape(*values.shape, 8).sum(axis=-1)


def _near_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` whose hashes differ in at most ``threshold`` bits, in row chunks to bound memory.

    Each chunk of rows is compared with the rows from its own start on only (the upper triangle): 20,000 images
    take about a second rather than the half minute of the full matrix through a byte lookup table.
    """
    pairs = []
    for start in range(0, len(hashes), CHUNK):
        xor = hashes[start : start + CHUNK, None] ^ hashes[None, start:]
        rows, columns = np.nonzero(_popcount(xor) <= threshold)
        pairs += [(start + i, start + j) for i, j in zip(rows.tolist(), columns.tolist()) if i < j]
    return pairs


def _split_rank(file: AuditedFile) -> tuple[int, str]:
    return SPLIT_ORDER.get(file.split, len(SPLIT_ORDER)), file.path


def find_duplicates(
    files: list[AuditedFile], scans: dict[str, Scan], near_threshold: int = NEAR_THRESHOLD
) -> list[DuplicateGroup]:
    """Groups of usable files joined by equal sha256 or by pHashes within ``near_threshold`` bits (< 0: exact only)."""
    usable = [file for file in files if scans[file.path].reason is None]
    parent = list(range(len(usable)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with_sha: dict[str, int] = {}
    pairs = [(first_with_sha.setdefault(scans[file.path].sha256, i), i) for i, file in enumerate(usable)]
    if near_threshold >= 0 and usable:
        pairs += _near_pairs(np.array([scans[file.path].phash for file in usable], dtype=np.uint64), near_threshold)
    for i, j in pairs:
        parent[find(j)] = find(i)
    components: dict[int, list[AuditedFile]] = defaultdict(list)
    for i, file in enumerate(usable):
        components[find(i)].append(file)
    groups = []
    for members in components.values():
        if len(members) > 1:
            match = "exact" if len({scans[m.path].sha256 for m in members}) == 1 else "near"
            groups.append(DuplicateGroup(match, sorted(members, key=_split_rank)))
    return sorted(groups, key=lambda group: _split_rank(group.members[0]))


def audit(
    root: str | Path,
    table: pd.DataFrame | None = None,
    near_threshold: int = NEAR_THRESHOLD,
    min_side: int = MIN_SIDE,
    progress: bool = False,
    listed: bool = False,
    allow_external_links: bool = False,
) -> AuditResult:
    """Walk, decode and hash every image of ``root``; ``table`` (path, label, split) supplies the splits to check.

    ``listed``: the files are the rows of ``table`` (a labels file's), not what a walk of the class folders finds.
    ``progress`` shows a bar on stderr while files are decoded.
    """
    root = check_root(root)
    if listed:
        rows = table[["path", "label", "split"]].itertuples(index=False)
        found = Listing(files=[AuditedFile(str(path), str(label), str(split)) for path, label, split in rows])
    else:
        found = list_dataset(root, allow_external_links=allow_external_links)
    files = found.files
    if table is not None:
        split_of = dict(zip(table.path, table.split))
        files = [replace(file, split=split_of.get(file.path, file.split)) for file in files]
    scans = scan_files(root, [file.path for file in files], min_side, progress, allow_external_links)
    bad = [(file.path, scans[file.path].reason) for file in files if scans[file.path].reason]
    return AuditResult(root, files, bad, find_duplicates(files, scans, near_threshold), found.ignored)


def audit_dataset(
    root: str | Path,
    output: str | Path | None = None,
    split_seed: int = 0,
    near_threshold: int = NEAR_THRESHOLD,
    min_side: int = MIN_SIDE,
    progress: bool = False,
    labels_csv: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    allow_external_links: bool = False,
) -> DatasetAudit:
    """Audit a data root as ``fit`` would split it and write ``bad_files.csv`` and ``duplicates.csv``.

    Leakage is checked on the split ``fit`` would use with ``split_seed`` (when the data can be split at all).
    Both CSVs are always written, so an old report never outlives its fix; ``output`` defaults to
    ``lightning_logs/audit/<dataset>/``.
    """
    root_path = check_root(root)
    given, kind = labelled_rows(root_path, labels_csv, allow_external_links)
    try:
        table, how = complete_split(given, str(root_path), split_seed, val_fraction, DEFAULT_SELECT_FRACTION)
    except UnsplittableError as error:
        table, how = given, f"not splittable, leakage not checked: {error}"
    result = audit(root_path, table, near_threshold, min_side, progress, labels_csv is not None, allow_external_links)
    if not result.files:
        raise TLBenchError(
            f"no image files under {root_path}; put them in class folders, {root_path}/<class>/<image>.jpg"
            " (jpg, png, bmp, webp, tif), or pass the folder that holds them"
        )
    out = Path(output) if output else default_output("audit", dataset_name(root_path))
    return DatasetAudit(
        result,
        f"layout: {kind} ({how})",
        write_bad_files(result.bad, out / "bad_files.csv"),
        write_duplicates(result.duplicates, out / "duplicates.csv"),
    )


def write_bad_files(bad: list[tuple[str, str]], path: str | Path) -> Path:
    """``path,reason`` rows; written even when empty so an old report never outlives the fix."""
    return write_csv(path, pd.DataFrame(bad, columns=["path", "reason"]))


def write_duplicates(groups: list[DuplicateGroup], path: str | Path) -> Path:
    """``group,kind,match,path,label,split`` rows, one per member; the first row of a group is the copy kept."""
    rows = [
        (number, g.kind, g.match, m.path, m.label, m.split) for number, g in enumerate(groups, 1) for m in g.members
    ]
    return write_csv(path, pd.DataFrame(rows, columns=["group", "kind", "match", "path", "label", "split"]))


def _first(items: list[str], n: int = 3) -> str:
    return "; ".join(items[:n]) + (f"; ... ({len(items) - n} more)" if len(items) > n else "")


def preflight(
    root: str | Path,
    table: pd.DataFrame,
    skip_bad: bool = False,
    dedupe: bool = False,
    near_threshold: int = NEAR_THRESHOLD,
    min_side: int = MIN_SIDE,
    report_dir: str | Path | None = None,
    progress: bool = False,
    allow_external_links: bool = False,
) -> PreflightResult:
    """Check the files of a split table before training; refuse with the fix, or drop and list what was asked.

    Args:
        root: the data root the table's paths are relative to.
        table: the split table (path, label, split).
        skip_bad: drop unusable files (returned in ``skipped``) instead of refusing to train.
        dedupe: for duplicate groups spanning train/val/test, keep the first copy (train, val, test, then path)
            and drop the others (returned in ``skipped``) instead of refusing to train.
        near_threshold: pHash bits within which two images are the same picture; below 0, exact copies only.
        min_side: shorter side below which an image is unusable.
        report_dir: when given, ``bad_files.csv`` and ``duplicates.csv`` are written there and named in errors.
        progress: show a bar on stderr while files are decoded (fit passes its ``enable_progress_bar``).
        allow_external_links: read files linked from outside ``root`` instead of counting them unusable.

    Duplicates within one split (including ones with conflicting labels) do not leak and are returned as
    ``problems`` for the log.
    """
    root = check_root(root)
    files = [
        AuditedFile(str(p), str(l), str(s)) for p, l, s in table[["path", "label", "split"]].itertuples(index=False)
    ]
    scans = scan_files(root, [file.path for file in files], min_side, progress, allow_external_links)
    bad = [(file.path, scans[file.path].reason) for file in files if scans[file.path].reason]
    groups = find_duplicates(files, scans, near_threshold)
    report = "lightning_logs/audit/<dataset>/bad_files.csv from 'tlbench data audit ROOT'"
    if report_dir is not None:
        report = str(write_bad_files(bad, Path(report_dir) / "bad_files.csv"))
        write_duplicates(groups, Path(report_dir) / "duplicates.csv")
    if bad and not skip_bad:
        raise TLBenchError(
            f"{len(bad)} unusable image file(s): {_first([f'{path} ({reason})' for path, reason in bad])};"
            f" see {report} or pass {SKIP_BAD_FLAG} to train without them"
        )
    leaks = [group for group in groups if "across-splits" in group.kind]
    if leaks and not dedupe:
        raise TLBenchError(
            f"{len(leaks)} group(s) of duplicate images span train/val/test, which inflates val/test scores:"
            f" {_first([' = '.join(m.path for m in group.members) + f' ({group.match})' for group in leaks])};"
            " pass --data.dedupe true to keep only the first copy (train before val before test)"
        )
    dropped = [(m.path, f"{g.match} duplicate of {g.members[0].path}") for g in leaks for m in g.members[1:]]
    skipped = bad + dropped
    kept = table[~table.path.isin({path for path, _ in skipped})].reset_index(drop=True)
    kept["sha256"] = [scans[path].sha256 for path in kept.path]
    lost = set(table.label[table.split == "train"]) - set(kept.label[kept.split == "train"])
    if lost:
        raise TLBenchError(
            f"classes {sorted(lost)} have no usable training image left after skipping {len(skipped)} file(s);"
            f" replace those files ('tlbench data audit {root}' lists them) or remove those classes"
        )
    problems = [f"duplicate images, {group.describe()}" for group in groups if group not in leaks]
    return PreflightResult(kept, skipped, problems, {path: scans[path].size for path in kept.path}, len(dropped))
