"""Download the 2017 study's five datasets from their original hosts and convert them to ``ROOT/<name>/<class>/*.jpg``.

Everything here uses the standard library (urllib, tarfile, zipfile, hashlib) plus Pillow and tqdm, so that
fetching data never needs Lightning or a GPU. The hosts are research servers that drop connections and move files,
so every download is resumable (HTTP Range into a ``.part`` file) and checked against a SHA-256: the one pinned here,
or else the one recorded by the first successful download into that root (trust on first use, ``TRUST_FILE``).
Every archive is validated member by member, and its unpacked size capped, before anything is written, and every
path built from a downloaded name must resolve inside its folder: downloads are untrusted input.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import http.client
import json
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from tlbench.data.images import ImageLoadError, is_image_file, load_rgb
from tlbench.errors import TLBenchError
from tlbench.io import write_csv, write_json

CHUNK_SIZE = 1 << 16
USER_AGENT = "tlbench-download/0.1 (+python-urllib)"
# Statuses worth retrying: the server or a proxy is temporarily unhappy. Everything else (404, 403) is final.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
JPEG_QUALITY = 95
# Extraction limits: the largest study archive (CUB, about 1.1 GB of JPEGs) unpacks to about its own size: images do
# not compress; a zip bomb unpacks to thousands of times its size. Both are options of the download command.
MAX_EXTRACT_BYTES = 4 * 10**9
MAX_EXTRACT_RATIO = 100.0
# ``ROOT/.downloads/TRUST_FILE``: original URL -> SHA-256 of files without a pinned checksum, from the first download.
TRUST_FILE = "trusted_sha256.json"
OPEN_IMAGES_ID = re.compile(r"[0-9a-f]{16}")  # every Open Images ImageID: 16 lowercase hex digits


# --------------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Archive:
    """One fixed file on a host; ``sha256``/``md5``/``size`` are ``None`` where nobody has verified them.

    Without a pinned ``sha256`` the first successful download's SHA-256 is recorded in ``TRUST_FILE`` and required
    of every later download into the same root.
    """

    url: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.parse.urlsplit(self.url).path).name


@dataclass(frozen=True)
class OpenImagesClass:
    """A tlbench class folder and the Open Images display names whose positive image-level labels feed it.

    Several display names are allowed because the class descriptions CSV is matched case-insensitively and
    tlbench could not check the exact spelling against the real file (see SOURCE.md).
    """

    folder: str
    display_names: tuple[str, ...]


@dataclass(frozen=True)
class OpenImagesFiles:
    """Open Images metadata: label ids -> names, human-verified image-level labels, and a per-image URL pattern."""

    class_descriptions: Archive
    image_labels: Archive
    image_url: str  # ``{image_id}`` is replaced; CVDF hosts every training image at a stable address


@dataclass(frozen=True)
class Source:
    """Everything needed to rebuild one dataset: where it comes from, how it is converted, how it is cited."""

    name: str
    title: str
    citation: str
    licence: str
    homepage: str
    archive: Archive | None = None
    classes: tuple[str, ...] = ()
    open_images: tuple[OpenImagesClass, ...] = ()
    notes: str = ""


OPEN_IMAGES_FILES = OpenImagesFiles(
    # Fixed files without a published checksum: sha256=None, trusted on first use.
    class_descriptions=Archive("https://storage.googleapis.com/openimages/v6/oidv6-class-descriptions.csv"),
    image_labels=Archive("https://storage.googleapis.com/openimages/v6/oidv6-train-annotations-human-imagelabels.csv"),
    image_url="https://open-images-dataset.s3.amazonaws.com/train/{image_id}.jpg",
)
OPEN_IMAGES_CITATION = (
    "Kuznetsova A., Rom H., Alldrin N., Uijlings J., Krasin I., Pont-Tuset J., Kamali S., Popov S., Malloci M., "
    "Kolesnikov A., Duerig T., Ferrari V. The Open Images Dataset V4. IJCV 2020. https://storage.googleapis.com/openimages/web/index.html"
)
OPEN_IMAGES_LICENCE = (
    "Annotations: CC BY 4.0 (Google LLC). Images: listed by Open Images as CC BY 2.0; each image keeps its own "
    "author and licence (see the Open Images image-ids CSV for attribution before redistributing)."
)
OPEN_IMAGES_NOTE = (
    "Images are the human-verified positive image-level labels (Confidence 1) of the Open Images V6 training split, "
    "sorted by ImageID; images positive for more than one of the chosen classes are skipped. The display names were "
    "chosen from the 2017 study's class list and were NOT checked against the real class-descriptions CSV by tlbench: "
    "if a name is missing the command stops and lists the closest names in the file."
)

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            name="leaves",
            title="Caltech Leaves 1999 (Markus Weber)",
            homepage="https://www.vision.caltech.edu/Image_Datasets/leaves/",
            # The archive is fixed but no checksum of it is published: sha256=None, trusted on first use.
            archive=Archive("https://www.vision.caltech.edu/Image_Datasets/leaves/leaves.tar"),
            classes=("Leaf_01", "Leaf_02", "Leaf_03"),
            citation=(
                "Markus Weber, Leaves dataset, California Institute of Technology, 1999"
                " (Caltech Computational Vision archive)."
            ),
            licence="Caltech Computational Vision archive: free for research use; no explicit licence is published.",
            notes=(
                "186 JPEG images (896x592) of leaves against different backgrounds. tlbench assigns Leaf_01..Leaf_03 "
                "from species folders inside the archive, in sorted order. If the archive has no species folders "
                "(its layout was not verified by tlbench) the command stops and says where the extracted images are."
            ),
        ),
        Source(
            name="birds",
            title="Caltech-UCSD Birds-200-2011 (10-class subset)",
            homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
            # MD5 as published with the CaltechDATA record and used by many loaders;
            # SHA-256 and size unknown to tlbench: the SHA-256 is trusted on first use.
            archive=Archive(
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                md5="97eceeb196236b17998738112f37df78",
            ),
            classes=(
                "Black_footed_Albatross",
                "Brown_Pelican",
                "Common_Yellowthroat",
                "Eared_Grebe",
                "Green_Jay",
                "Lincoln_Sparrow",
                "Pelagic_Cormorant",
                "Pine_Warbler",
                "Sage_Thrasher",
                "Winter_Wren",
            ),
            citation=(
                "Wah C., Branson S., Welinder P., Perona P., Belongie S. The Caltech-UCSD Birds-200-2011 Dataset. "
                "Technical Report CNS-TR-2011-001, California Institute of Technology, 2011."
            ),
            licence="Research and non-commercial use; images come from Flickr and keep their owners' rights.",
            notes=(
                "Only the 10 classes of the 2017 study are kept;"
                " CUB folders such as 001.Black_footed_Albatross are renamed to the plain name."
            ),
        ),
        Source(
            name="butterflies",
            title="Leeds Butterfly Dataset v1.0",
            homepage="https://www.josiahwang.com/dataset/leedsbutterfly/",
            # Fixed archive, no checksum published by its authors: sha256=None, trusted on first use.
            archive=Archive("https://www.josiahwang.com/dataset/leedsbutterfly/leedsbutterfly_dataset_v1.0.zip"),
            classes=(
                "danaus_plexippus",
                "heliconius_charitonius",
                "heliconius_erato",
                "junonia_coenia",
                "lycaena_phlaeas",
                "nymphalis_antiopa",
                "papilio_cresphontes",
                "pieris_rapae",
                "vanessa_atalanta",
                "vanessa_cardui",
            ),
            citation=(
                "Wang J., Markert K., Everingham M. Learning Models for Object Recognition from Natural Language "
                "Descriptions. BMVC 2009."
            ),
            licence="Research use, as stated on the dataset page; images were collected from Google Image Search.",
            notes=(
                "Images are named CCCNNNN.png with CCC the class id 001..010;"
                " segmentation masks are not kept; PNGs are converted to JPEG."
            ),
        ),
        Source(
            name="noodles",
            title="Open Images V6: fried noodles vs noodle soup",
            homepage="https://storage.googleapis.com/openimages/web/index.html",
            open_images=(
                OpenImagesClass("fried_noodles", ("Fried noodles",)),
                OpenImagesClass("noodle_soup", ("Noodle soup",)),
            ),
            citation=OPEN_IMAGES_CITATION,
            licence=OPEN_IMAGES_LICENCE,
            notes=OPEN_IMAGES_NOTE,
        ),
        Source(
            name="dogs",
            title="Open Images V6: six dog breeds",
            homepage="https://storage.googleapis.com/openimages/web/index.html",
            # The 2017 study's breed folders; display names follow Knowledge Graph spelling, with alternatives.
            open_images=(
                OpenImagesClass("american_bull_dog", ("American bulldog",)),
                OpenImagesClass("american_foxhound", ("American foxhound",)),
                OpenImagesClass("american_pit_bull", ("American pit bull terrier", "Pit bull")),
                OpenImagesClass("bernese_mountain_dog", ("Bernese mountain dog",)),
                OpenImagesClass("border_collie", ("Border collie",)),
                OpenImagesClass("siberian_husky", ("Siberian husky",)),
            ),
            citation=OPEN_IMAGES_CITATION,
            licence=OPEN_IMAGES_LICENCE,
            notes=OPEN_IMAGES_NOTE,
        ),
    )
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise TLBenchError(f"unknown dataset '{name}'; choose one of: {', '.join(SOURCES)}") from None


# --------------------------------------------------------------------------------------------------- URLs


def apply_mirror(url: str, mirror: str | None) -> str:
    """Point ``url`` at a local mirror: its scheme and host are replaced and the mirror's path is prefixed.

    ``https://host/a/b.tgz?x=1`` with mirror ``http://127.0.0.1:8000/cache`` becomes
    ``http://127.0.0.1:8000/cache/a/b.tgz?x=1``, so a mirror is a plain copy of each host's paths.
    """
    if not mirror:
        return url
    target = urllib.parse.urlsplit(mirror)
    if target.scheme not in ("http", "https") or not target.netloc:
        raise TLBenchError(f"--mirror {mirror} is not an http(s) URL; pass one such as http://127.0.0.1:8000/prefix")
    original = urllib.parse.urlsplit(url)
    path = target.path.rstrip("/") + original.path
    return urllib.parse.urlunsplit((target.scheme, target.netloc, path, original.query, ""))


# --------------------------------------------------------------------------------------------------- fetch


def _hashes(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def verify(path: Path, url: str, sha256: str | None = None, md5: str | None = None, size: int | None = None) -> str:
    """Check size and checksums of a finished download; returns the observed SHA-256 to record in SOURCE.md.

    A mismatching file is deleted before the error, because resuming onto corrupt bytes can never succeed."""
    observed_size = path.stat().st_size
    if size is not None and observed_size != size:
        path.unlink()
        raise TLBenchError(
            f"{url}: downloaded {observed_size} bytes but expected {size}; deleted the download, nothing was"
            " extracted: rerun, or check --mirror"
        )
    observed_sha256, observed_md5 = _hashes(path)
    for kind, expected, observed in (("SHA-256", sha256, observed_sha256), ("MD5", md5, observed_md5)):
        if expected is not None and expected.lower() != observed:
            path.unlink()
            raise TLBenchError(
                f"{url}: {kind} is {observed}, expected {expected}; deleted the download, nothing was extracted:"
                " rerun, or check --mirror"
            )
    return observed_sha256


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _download_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``: resume with Range if the server honours it, else start over."""
    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the .part is already complete (or longer than the file): start over once
            part.unlink()
            response = _open(url, 0, timeout)
        else:
            raise
    with response:
        resumed = (
            start and response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {start}-")
        )
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        label = PurePosixPath(urllib.parse.urlsplit(url).path).name or url
        with (
            part.open("ab" if resumed else "wb") as file,
            tqdm(
                total=total,
                initial=start,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar,
        ):
            for chunk in iter(lambda: response.read(CHUNK_SIZE), b""):
                file.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def fetch(
    url: str,
    dest: Path,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 2.0,
    progress: bool = False,
) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, and return its SHA-256.

    ``dest`` only appears once the checksums match, so a file at ``dest`` is always a verified download; ``verify``
    deletes a mismatching one. Connection failures and 5xx answers are retried ``retries`` times, continuing where
    the previous try stopped.
    """
    dest = Path(dest)
    if dest.exists():
        try:
            return verify(dest, url, sha256, md5, size)
        except TLBenchError:
            pass  # a cached file damaged since it was verified, now deleted: download it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _download_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as error:
            if error.code not in RETRYABLE_STATUS or attempt == retries:
                raise TLBenchError(f"{url}: HTTP {error.code} {error.reason} (check the URL or --mirror)") from None
        except (
            urllib.error.URLError,
            OSError,
            http.client.HTTPException,
        ) as error:  # refused, reset, timed out, truncated
            if attempt == retries:
                reason = getattr(error, "reason", error)
                raise TLBenchError(f"{url}: {reason}; rerun the command to resume {part}") from None
        time.sleep(backoff * (attempt + 1))
    observed = verify(part, url, sha256, md5, size)
    part.replace(dest)
    return observed


# --------------------------------------------------------------------------------------------------- extract


def _check_member_path(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise TLBenchError(
            f"{archive}: refusing unsafe member path '{name}' (absolute or leaving the folder); nothing was"
            " extracted: delete the archive and check --mirror"
        )
    return path


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = _check_member_path(member.name, archive)
    if member.isdev() or member.isfifo():
        raise TLBenchError(
            f"{archive}: refusing device or pipe member '{member.name}'; nothing was extracted: delete the archive"
            " and check --mirror"
        )
    if member.issym() or member.islnk():
        # A symlink's target is relative to its own folder; a hard link's target is relative to the archive root.
        base = path.parent if member.issym() else PurePosixPath()
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or _escapes(base / target):
            raise TLBenchError(
                f"{archive}: refusing link '{member.name}' -> '{member.linkname}' pointing outside the archive;"
                " nothing was extracted: delete the archive and check --mirror"
            )
    elif not (member.isfile() or member.isdir()):
        raise TLBenchError(
            f"{archive}: refusing special member '{member.name}'; nothing was extracted: delete the archive and"
            " check --mirror"
        )


def _escapes(path: PurePosixPath) -> bool:
    """Whether a relative path climbs above its root once ``..`` is applied."""
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def _check_unpacked_size(archive: Path, total: int, max_bytes: int, max_ratio: float) -> None:
    """Refuse an archive whose members add up to more than ``max_bytes`` or ``max_ratio`` times its own size."""
    size = archive.stat().st_size
    if total > max_bytes or total > max_ratio * size:
        raise TLBenchError(
            f"{archive}: would unpack to {total:,} bytes, {total / max(size, 1):.0f} times its own size, over the "
            f"limit of {max_bytes:,} bytes or {max_ratio:g} times (--max_extract_gb, --max_extract_ratio); nothing "
            "was extracted: delete the archive and download again, or raise the limit if it is genuine"
        )


def _extract_checked(archive: Path, dest: Path, max_bytes: int, max_ratio: float) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            for member in members:
                _check_member_path(member.filename, archive)
            # zipfile stops each member at its declared size (and fails its CRC), so the declared sizes bound it.
            _check_unpacked_size(archive, sum(m.file_size for m in members), max_bytes, max_ratio)
            bundle.extractall(dest)
        return
    with tarfile.open(archive) as bundle:
        members = bundle.getmembers()
        for member in members:
            _check_tar_member(member, archive)
        _check_unpacked_size(archive, sum(m.size for m in members if m.isfile()), max_bytes, max_ratio)
        # Python's own "data" filter repeats the checks, resolving links on disk, as a second line of defence.
        bundle.extractall(dest, members=members, filter="data")


def safe_extract(
    archive: Path, dest: Path, max_bytes: int = MAX_EXTRACT_BYTES, max_ratio: float = MAX_EXTRACT_RATIO
) -> None:
    """Extract a tar (any compression) or zip into the new folder ``dest`` after checking every member.

    Refused before anything is written: absolute paths, ``..`` components, links pointing outside ``dest``, device
    files and pipes, and more than ``max_bytes`` or ``max_ratio`` times the archive's size unpacked (a bomb: 200 KB
    can expand to gigabytes). On any failure, part way included (a corrupt member, a full disk), ``dest`` is
    removed, so a half-extracted folder is never converted.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True)  # new, so that removing it on failure removes nothing else
    try:
        _extract_checked(archive, dest, max_bytes, max_ratio)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        shutil.rmtree(dest, ignore_errors=True)
        raise TLBenchError(
            f"{archive}: extraction failed ({error}); nothing was extracted: free disk space if it is full, else"
            " delete the archive and download again"
        ) from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------- convert


def save_jpeg(source: Path, dest: Path) -> None:
    """Write ``source`` as ``dest`` (a .jpg): JPEGs are copied byte for byte after a decode check, others re-encoded."""
    image = load_rgb(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(source, dest)
    else:
        image.save(dest, "JPEG", quality=JPEG_QUALITY)


def _inside(base: Path, name: str) -> Path:
    """``base / name``, refused unless it resolves inside ``base``.

    ``name`` comes from a downloaded file, and a file is both written and, when it fails, deleted at that path:
    a name such as ``../../x`` must never reach outside the download root.
    """
    path = base / name
    if not path.resolve().is_relative_to(base.resolve()):
        raise TLBenchError(
            f"refusing to write {path}: the downloaded name {name!r} leads outside {base}; the download is not"
            " genuine: delete it from ROOT/.downloads and rerun (or check --mirror)"
        )
    return path


def _copy_all(pairs: Iterable[tuple[Path, str]], out: Path) -> dict[str, int]:
    """Save every ``(image, class)`` pair as ``out/<class>/<stem>.jpg``; returns images per class."""
    counts: dict[str, int] = {}
    for path, label in pairs:
        try:
            save_jpeg(path, _inside(out, f"{label}/{path.stem}.jpg"))
        except ImageLoadError as error:
            print(f"skipped {path.name}: {error}", file=sys.stderr)
            continue
        counts[label] = counts.get(label, 0) + 1
    return counts


def _images(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def convert_leaves(extracted: Path, out: Path, source: Source) -> dict[str, int]:
    """Species folders inside the archive become Leaf_01.. in sorted order."""
    images = list(_images(extracted))
    folders = sorted({p.parent for p in images})
    if len(folders) != len(source.classes):
        raise TLBenchError(
            f"{source.archive.filename} holds {len(images)} images in {len(folders)} folder(s), not one folder per "
            f"species ({len(source.classes)}); tlbench cannot label them. The extracted images are in {extracted}: "
            f"sort them into {out}/{source.classes[0]} .. {source.classes[-1]} by hand"
        )
    label = dict(zip(folders, source.classes))
    return _copy_all(((p, label[p.parent]) for p in images), out)


def convert_birds(extracted: Path, out: Path, source: Source) -> dict[str, int]:
    """Keep ``images/NNN.<Class>/`` for the chosen classes, renamed to the plain class name."""
    wanted = set(source.classes)
    pairs = [
        (path, path.parent.name.split(".", 1)[1])
        for path in _images(extracted)
        if path.parent.parent.name == "images"
        and "." in path.parent.name
        and path.parent.name.split(".", 1)[1] in wanted
    ]
    return _copy_all(pairs, out)


LEEDS_IMAGE = re.compile(r"^(\d{3})\d{4}\.png$", re.IGNORECASE)


def convert_butterflies(extracted: Path, out: Path, source: Source) -> dict[str, int]:
    """``images/CCCNNNN.png`` -> class ``source.classes[CCC - 1]``; masks (``*_seg0.png``) do not match the pattern."""
    pairs = []
    for path in _images(extracted):
        match = LEEDS_IMAGE.match(path.name)
        if match and path.parent.name == "images" and 1 <= int(match.group(1)) <= len(source.classes):
            pairs.append((path, source.classes[int(match.group(1)) - 1]))
    return _copy_all(pairs, out)


CONVERTERS: dict[str, Callable[[Path, Path, Source], dict[str, int]]] = {
    "leaves": convert_leaves,
    "birds": convert_birds,
    "butterflies": convert_butterflies,
}


# --------------------------------------------------------------------------------------------------- Open Images


def resolve_open_images_labels(descriptions: Path, classes: Iterable[OpenImagesClass]) -> dict[str, str]:
    """Map label ids (``/m/...``) to class folders by display name, case-insensitively; missing names are errors."""
    by_name: dict[str, list[str]] = {}
    with descriptions.open(newline="", encoding="utf-8") as file:
        for row in csv.reader(file):
            if len(row) >= 2 and row[0] != "LabelName":
                by_name.setdefault(row[1].strip().lower(), []).append(row[0])
    label_to_folder = {}
    for wanted in classes:
        ids = [i for name in wanted.display_names for i in by_name.get(name.lower(), [])]
        if not ids:
            close = difflib.get_close_matches(wanted.display_names[0].lower(), by_name, n=5, cutoff=0.6)
            hint = f"closest names: {', '.join(close)}" if close else "no similar names"
            raise TLBenchError(
                f"{descriptions.name} has no class named {' or '.join(map(repr, wanted.display_names))} ({hint}); "
                f"update OpenImagesClass('{wanted.folder}', ...) in tlbench/data/download.py"
            )
        label_to_folder.update(dict.fromkeys(ids, wanted.folder))
    return label_to_folder


def select_open_images(labels: Path, label_to_folder: dict[str, str]) -> dict[str, list[str]]:
    """Image ids per folder from positive human labels, sorted, without images positive for two chosen classes.

    Every id of a chosen class must be an Open Images ImageID (``OPEN_IMAGES_ID``): ids become file names, and a
    file that lists anything else is not the real label list.
    """
    folders_of: dict[str, set[str]] = {}
    with labels.open(encoding="utf-8") as file:
        # Plain splitting instead of csv: the real file has tens of millions of comma-free rows.
        columns = file.readline().strip().split(",")
        image_col, label_col, confidence_col = (columns.index(c) for c in ("ImageID", "LabelName", "Confidence"))
        for number, line in enumerate(file, start=2):
            row = line.rstrip("\r\n").split(",")
            folder = label_to_folder.get(row[label_col])
            if folder is None:
                continue
            if not OPEN_IMAGES_ID.fullmatch(row[image_col]):
                raise TLBenchError(
                    f"{labels} line {number}: ImageID {row[image_col]!r} is not 16 hex digits, so this is not the"
                    " Open Images label list: delete it and rerun (or check --mirror)"
                )
            if row[confidence_col] in ("1", "1.0"):
                folders_of.setdefault(row[image_col], set()).add(folder)
    chosen: dict[str, list[str]] = {folder: [] for folder in dict.fromkeys(label_to_folder.values())}
    for image_id in sorted(folders_of):
        if len(folders_of[image_id]) == 1:
            chosen[next(iter(folders_of[image_id]))].append(image_id)
    return chosen


@dataclass
class ImageFailure:
    image_id: str
    folder: str
    url: str
    error: str


@dataclass
class OpenImagesResult:
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[ImageFailure] = field(default_factory=list)


def download_open_images(
    candidates: dict[str, list[str]],
    url_pattern: str,
    out: Path,
    cache: Path,
    per_class: int,
    mirror: str | None = None,
    workers: int = 8,
    retries: int = 3,
    backoff: float = 2.0,
    progress: bool = False,
) -> OpenImagesResult:
    """Download up to ``per_class`` decodable images per folder, trying further candidates when some fail.

    ``progress`` shows one bar per folder on stderr (images, not bytes: each image is a separate small download).
    """
    result = OpenImagesResult()

    def one(image_id: str, folder: str) -> ImageFailure | None:
        url = apply_mirror(url_pattern.format(image_id=image_id), mirror)
        cached, dest = _inside(cache, f"{image_id}.jpg"), _inside(out, f"{folder}/{image_id}.jpg")
        try:
            fetch(url, cached, retries=retries, timeout=30.0, backoff=backoff, progress=False)
            save_jpeg(cached, dest)
            return None
        except (TLBenchError, ImageLoadError) as error:
            cached.unlink(missing_ok=True)
            return ImageFailure(image_id, folder, url, str(error))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for folder, ids in candidates.items():
            done, position = 0, 0
            with tqdm(total=min(per_class, len(ids)), desc=folder, unit="image", disable=not progress) as bar:
                while done < per_class and position < len(ids):
                    batch = ids[position : position + per_class - done]
                    position += len(batch)
                    for failure in pool.map(lambda i: one(i, folder), batch):
                        if failure is None:
                            done += 1
                            bar.update(1)
                        else:
                            result.failures.append(failure)
            result.counts[folder] = done
    return result


def write_failure_report(path: Path, failures: list[ImageFailure]) -> None:
    rows = [(f.image_id, f.folder, f.url, f.error) for f in failures]
    write_csv(path, pd.DataFrame(rows, columns=["image_id", "class", "url", "error"]))


# --------------------------------------------------------------------------------------------------- SOURCE.md


def write_source_md(out: Path, source: Source, downloads: dict[str, str], counts: dict[str, int]) -> None:
    """Record where the data came from, how to cite it, its licence and what was actually downloaded."""
    lines = [f"# {source.title}", "", f"Homepage: {source.homepage}", "", "## Citation", "", source.citation, ""]
    lines += ["## Licence", "", source.licence, "", "## How tlbench built this folder", "", source.notes, ""]
    lines += ["Downloaded files (observed SHA-256; tlbench pins only the checksums it could verify):", ""]
    lines += [f"- {url} sha256={digest}" for url, digest in downloads.items()]
    lines += ["", "Images per class:", ""] + [f"- {name}: {count}" for name, count in sorted(counts.items())]
    (out / "SOURCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------- a whole dataset

FAILURE_REPORT = "failed_images.csv"


@dataclass
class DownloadResult:
    """The dataset folder, images per class, and how many Open Images downloads failed (``FAILURE_REPORT``)."""

    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    existed: bool = False  # made by an earlier download and kept; nothing was downloaded
    trusted: dict[str, str] = field(default_factory=dict)  # URL -> SHA-256 recorded on first use by this download


def read_trusted(path: Path) -> dict[str, str]:
    """``TRUST_FILE``'s URL -> SHA-256 records, empty before the first download into this root."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise TLBenchError(
            f"{path} is unreadable ({error}); restore it or delete it to trust the next download"
        ) from None
    if not isinstance(records, dict) or not all(isinstance(v, str) for v in records.values()):
        raise TLBenchError(f"{path} is not a JSON object of URL -> SHA-256; restore it or delete it")
    return records


@dataclass
class ArchiveFetcher:
    """Fetches the fixed files of one download and checks each SHA-256: pinned, else trusted on first use.

    A file with neither is accepted and remembered; ``trust_new`` records it once the dataset was built, so a
    download that proved broken (a corrupt or hostile archive) is never the one trusted.
    """

    trust_file: Path
    mirror: str | None
    progress: bool
    trusted: dict[str, str] = field(init=False)
    fetched: list[tuple[Archive, str, str]] = field(default_factory=list)  # (archive, URL fetched, SHA-256)

    def __post_init__(self) -> None:
        self.trusted = read_trusted(self.trust_file)

    def get(self, archive: Archive, folder: Path) -> Path:
        url = apply_mirror(archive.url, self.mirror)
        dest = folder / archive.filename
        digest = fetch(
            url, dest, sha256=archive.sha256, md5=archive.md5, size=archive.size, progress=self.progress
        )  # a pinned checksum is checked there; a recorded one here
        expected = self.trusted.get(archive.url)
        if expected is not None and digest != expected:
            dest.unlink()
            raise TLBenchError(
                f"{url}: SHA-256 is {digest}, but the first download recorded {expected} in {self.trust_file};"
                " deleted the download, nothing was extracted (check --mirror; if the host changed the file on"
                " purpose, delete its line there and rerun)"
            )
        self.fetched.append((archive, url, digest))
        return dest

    def trust_new(self) -> dict[str, str]:
        """Record the SHA-256 of every fetched file that had none; returns the new URL -> SHA-256 records."""
        new = {a.url: digest for a, _, digest in self.fetched if a.sha256 is None and a.url not in self.trusted}
        if new:
            write_json(self.trust_file, {**self.trusted, **new})
        return new


def _from_archive(
    source: Source, cache: Path, staging: Path, fetcher: ArchiveFetcher, max_bytes: int, max_ratio: float
) -> dict[str, int]:
    archive = fetcher.get(source.archive, cache)
    extracted = cache / "extracted"
    shutil.rmtree(extracted, ignore_errors=True)
    safe_extract(archive, extracted, max_bytes, max_ratio)
    counts = CONVERTERS[source.name](extracted, staging, source)
    shutil.rmtree(extracted)  # kept on failure so the user can inspect it; the archive itself stays cached
    return counts


def _from_open_images(
    source: Source, cache: Path, staging: Path, fetcher: ArchiveFetcher, per_class: int
) -> tuple[dict[str, int], int]:
    files = OPEN_IMAGES_FILES
    shared = cache.parent / "open_images"  # metadata shared by noodles and dogs, kept by --force (hundreds of MB)
    descriptions = fetcher.get(files.class_descriptions, shared)
    labels = fetcher.get(files.image_labels, shared)
    candidates = select_open_images(labels, resolve_open_images_labels(descriptions, source.open_images))
    result = download_open_images(
        candidates,
        files.image_url,
        staging,
        cache / "images",
        per_class,
        mirror=fetcher.mirror,
        progress=fetcher.progress,
    )
    staging.mkdir(parents=True, exist_ok=True)
    write_failure_report(staging / FAILURE_REPORT, result.failures)
    return result.counts, len(result.failures)


def download_dataset(
    name: str,
    root: str | Path = "data",
    mirror: str | None = None,
    per_class: int = 200,
    force: bool = False,
    progress: bool = False,
    max_extract_bytes: int = MAX_EXTRACT_BYTES,
    max_extract_ratio: float = MAX_EXTRACT_RATIO,
) -> DownloadResult:
    """Download dataset ``name`` into ``root/name/<class>/*.jpg``, with its ``SOURCE.md``.

    Archives are cached in ``root/.downloads`` and resumed if interrupted; the dataset folder only appears once
    it is complete (it is built in ``root/.name.partial``, removed on failure), so a half-finished run never looks
    like data to training commands. An existing folder made by an earlier download is kept unless ``force``, and
    even then replaced only by a complete new one.

    Args:
        name: leaves, birds, butterflies, noodles or dogs.
        root: folder that receives ``root/name``.
        mirror: base URL replacing scheme and host of every download URL (a local copy of the hosts' paths).
        per_class: Open Images datasets only: at most this many images per class.
        force: rebuild ``root/name`` and download again even if it exists.
        progress: show download progress bars on stderr.
        max_extract_bytes: refuse an archive that unpacks to more bytes than this.
        max_extract_ratio: refuse an archive that unpacks to more than this many times its own size.
    """
    source = get_source(name)
    if per_class < 1:
        raise TLBenchError(f"--per_class {per_class} is below 1; pass --per_class 1 or more")
    root_path = Path(root).expanduser()
    if root_path.exists() and not root_path.is_dir():
        raise TLBenchError(f"--data_dir {root_path} is a file, not a folder; pass the folder to download into")
    out = root_path / name
    cache = root_path / ".downloads" / name
    if out.exists() and not force:
        if (out / "SOURCE.md").exists():
            return DownloadResult(out, existed=True)
        raise TLBenchError(
            f"{out} exists but was not made by 'data download'; move it away or pass --force to replace it"
        )
    if force:
        shutil.rmtree(cache, ignore_errors=True)
    fetcher = ArchiveFetcher(root_path / ".downloads" / TRUST_FILE, mirror, progress)
    staging = root_path / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    failures = 0
    try:
        if source.archive is not None:
            counts = _from_archive(source, cache, staging, fetcher, max_extract_bytes, max_extract_ratio)
        else:
            counts, failures = _from_open_images(source, cache, staging, fetcher, per_class)
        if not sum(counts.values()):
            raise TLBenchError(
                f"no images of {', '.join(source.classes or counts)} found for '{name}'; check --mirror or the source"
            )
        write_source_md(staging, source, {url: digest for _, url, digest in fetcher.fetched}, counts)
        shutil.rmtree(out, ignore_errors=True)  # only with --force: the complete new folder replaces it
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DownloadResult(out, counts, failures, trusted=fetcher.trust_new())
