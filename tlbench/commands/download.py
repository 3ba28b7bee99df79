"""``python -m tlbench data download NAME``: rebuild one of the 2017 study's datasets from its original source."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tlbench.data.download import (
    CONVERTERS,
    OPEN_IMAGES_FILES,
    Source,
    apply_mirror,
    download_open_images,
    fetch,
    get_source,
    resolve_open_images_labels,
    safe_extract,
    select_open_images,
    write_failure_report,
    write_source_md,
)
from tlbench.errors import TLBenchError

FAILURE_REPORT = "failed_images.csv"


def _from_archive(source: Source, cache: Path, staging: Path, mirror: str | None) -> tuple[dict[str, str], dict[str, int]]:
    archive = source.archive
    url = apply_mirror(archive.url, mirror)
    digest = fetch(url, cache / archive.filename, sha256=archive.sha256, md5=archive.md5, size=archive.size)
    extracted = cache / "extracted"
    shutil.rmtree(extracted, ignore_errors=True)
    safe_extract(cache / archive.filename, extracted)
    counts = CONVERTERS[source.name](extracted, staging, source)
    shutil.rmtree(extracted)  # kept on failure so the user can inspect it; the archive itself stays cached
    return {url: digest}, counts


def _from_open_images(
    source: Source, cache: Path, staging: Path, mirror: str | None, per_class: int
) -> tuple[dict[str, str], dict[str, int]]:
    files = OPEN_IMAGES_FILES
    shared = cache.parent / "open_images"  # metadata shared by noodles and dogs, kept by --force (hundreds of MB)
    downloads = {}
    for archive in (files.class_descriptions, files.image_labels):
        url = apply_mirror(archive.url, mirror)
        downloads[url] = fetch(url, shared / archive.filename, sha256=archive.sha256, md5=archive.md5, size=archive.size)
    label_to_folder = resolve_open_images_labels(shared / files.class_descriptions.filename, source.open_images)
    candidates = select_open_images(shared / files.image_labels.filename, label_to_folder)
    result = download_open_images(candidates, files.image_url, staging, cache / "images", per_class, mirror=mirror)
    staging.mkdir(parents=True, exist_ok=True)
    write_failure_report(staging / FAILURE_REPORT, result.failures)
    if result.failures:
        print(f"{len(result.failures)} image(s) failed; see {FAILURE_REPORT} in the dataset folder", file=sys.stderr)
    return downloads, result.counts


def download(name: str, root: str = "data", mirror: str | None = None, per_class: int = 200, force: bool = False) -> None:
    """Download dataset NAME (leaves, birds, butterflies, noodles, dogs) into ROOT/NAME/<class>/*.jpg.

    Archives are cached in ROOT/.downloads and resumed if interrupted; the dataset folder only appears once
    it is complete, so a half-finished run never looks like data to training commands.

    Args:
        name: leaves, birds, butterflies, noodles or dogs.
        root: Folder that receives ROOT/NAME.
        mirror: Base URL replacing scheme and host of every download URL (a local copy of the hosts' paths).
        per_class: Open Images datasets only: at most this many images per class.
        force: Rebuild ROOT/NAME and download again even if it exists.
    """
    source = get_source(name)
    if per_class < 1:
        raise TLBenchError(f"--per_class must be at least 1, got {per_class}")
    root_path = Path(root).expanduser()
    out = root_path / name
    cache = root_path / ".downloads" / name
    if out.exists() and not force:
        if (out / "SOURCE.md").exists():
            print(f"{out} already exists (pass --force to download it again)", file=sys.stderr)
            return
        raise TLBenchError(f"{out} exists but was not made by 'data download'; move it away or pass --force to replace it")
    if force:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    staging = root_path / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)

    if source.archive is not None:
        downloads, counts = _from_archive(source, cache, staging, mirror)
    else:
        downloads, counts = _from_open_images(source, cache, staging, mirror, per_class)
    if not sum(counts.values()):
        raise TLBenchError(f"no images of {', '.join(source.classes or counts)} found for '{name}'; check --mirror or the source")
    write_source_md(staging, source, downloads, counts)
    staging.replace(out)
    summary = ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
    print(f"{out}: {sum(counts.values())} images ({summary})")
