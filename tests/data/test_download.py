"""``data download`` against a local Range-capable HTTP server serving archives generated in tmp dirs.

No test reaches a real host: every URL goes through ``--mirror http://127.0.0.1:PORT``, and the served files are
tiny fakes with each dataset's folder layout.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tlbench.commands import download as command
from tlbench.data import download as dl
from tlbench.errors import TLBenchError

# --------------------------------------------------------------------------------------------------- server


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (URL path -> bytes), honours ``Range: bytes=N-`` and logs what it sent."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = urllib.parse.urlsplit(self.path).path
        data = self.server.files.get(path)
        self.server.log.append((path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[6:-1])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drop = self.server.drop_after.pop(path, None)  # simulate a connection cut once
        self.wfile.write(body[:drop] if drop is not None else body)
        self.server.sent[path] = self.server.sent.get(path, 0) + (len(body) if drop is None else drop)
        if drop is not None:
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.log, httpd.sent, httpd.drop_after = {}, [], {}, {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(server, original_url: str, data: bytes) -> str:
    """Put ``data`` where the mirror maps ``original_url``; returns the mirrored URL."""
    server.files[urllib.parse.urlsplit(original_url).path] = data
    return dl.apply_mirror(original_url, server.url)


# --------------------------------------------------------------------------------------------------- fakes


def image_bytes(fmt: str = "JPEG", color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 18), color).save(buffer, fmt)
    return buffer.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fake_leaves() -> bytes:
    return make_tar({f"leaves/species_{s}/image_{s}{i:03d}.jpg": image_bytes() for s in "abc" for i in range(2)})


def fake_cub() -> bytes:
    folders = {"001.Black_footed_Albatross": 3, "100.Brown_Pelican": 2, "002.Laysan_Albatross": 2}  # last: distractor
    members = {"attributes.txt": b"1 has_bill_shape::curved\n"}
    for folder, count in folders.items():
        for i in range(count):
            members[f"CUB_200_2011/images/{folder}/{folder.split('.')[1]}_{i:04d}.jpg"] = image_bytes()
    return make_tar(members, mode="w:gz")


def fake_leeds() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for class_id, count in ((1, 2), (10, 3)):
            for i in range(1, count + 1):
                name = f"{class_id:03d}{i:04d}"
                bundle.writestr(f"leedsbutterfly/images/{name}.png", image_bytes("PNG"))
                bundle.writestr(f"leedsbutterfly/segmentations/{name}_seg0.png", image_bytes("PNG", (0, 0, 0)))
        bundle.writestr("leedsbutterfly/descriptions/001.txt", b"Danaus plexippus\n")
    return buffer.getvalue()


def run_download(*args: str) -> subprocess.CompletedProcess:
    """``python -m tlbench data download ARGS``, in this process."""
    return run_cli("data", "download", *args, cwd=Path.cwd())


def jpgs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.jpg"))


# ------------------------------------------------------------------------------------------------- archives via the CLI


def test_cli_butterflies_converts_pngs_to_jpeg_class_folders(server, tmp_path):
    archive = fake_leeds()
    serve(server, dl.SOURCES["butterflies"].archive.url, archive)
    result = run_download("butterflies", "--data_dir", str(tmp_path), "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "butterflies"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["danaus_plexippus", "vanessa_cardui"]
    assert jpgs(out / "danaus_plexippus") == ["0010001.jpg", "0010002.jpg"]  # masks were not taken
    assert len(jpgs(out / "vanessa_cardui")) == 3
    with Image.open(out / "vanessa_cardui" / "0100001.jpg") as image:
        assert image.format == "JPEG"
    source_md = (out / "SOURCE.md").read_text()
    assert "BMVC 2009" in source_md and "vanessa_cardui: 3" in source_md
    assert hashlib.sha256(archive).hexdigest() in source_md  # observed hash recorded
    assert not (tmp_path / ".downloads" / "butterflies" / "extracted").exists()


def test_cli_resumes_truncated_part_with_range(server, tmp_path):
    data = fake_leaves()
    path = urllib.parse.urlsplit(dl.SOURCES["leaves"].archive.url).path
    serve(server, dl.SOURCES["leaves"].archive.url, data)
    part = tmp_path / ".downloads" / "leaves" / "leaves.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:5000])
    result = run_download("leaves", "--data_dir", str(tmp_path), "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    assert (path, "bytes=5000-") in server.log
    assert server.sent[path] == len(data) - 5000
    out = tmp_path / "leaves"
    assert {d.name: len(jpgs(d)) for d in out.iterdir() if d.is_dir()} == {"Leaf_01": 2, "Leaf_02": 2, "Leaf_03": 2}
    assert hashlib.sha256(data).hexdigest() in (out / "SOURCE.md").read_text()


def test_cli_wrong_checksum_refused_before_extraction(server, tmp_path):
    serve(server, dl.SOURCES["birds"].archive.url, fake_cub())  # a fake can never match the pinned CUB MD5
    result = run_download("birds", "--data_dir", str(tmp_path), "--mirror", server.url)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]  # after the progress lines
    assert "MD5" in result.stderr and "CUB_200_2011.tgz" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "birds").exists()
    assert not (tmp_path / ".downloads" / "birds" / "extracted").exists()
    assert not list((tmp_path / ".downloads" / "birds").glob("CUB_200_2011.tgz*"))  # bad bytes deleted


def test_unreachable_host_is_retried_then_clear_error(tmp_path):
    url = "http://127.0.0.1:9/dataset/leedsbutterfly_dataset_v1.0.zip"  # port 9 (discard): connection refused
    with pytest.raises(TLBenchError, match=r"leedsbutterfly_dataset_v1.0.zip: .*rerun the command to resume"):
        dl.fetch(url, tmp_path / "a.zip", retries=1, backoff=0, progress=False)
    assert not (tmp_path / "a.zip").exists()


# ----------------------------------------------------------------------------------------------- archives via functions


def test_birds_keeps_only_study_classes_with_plain_names(server, tmp_path, monkeypatch):
    data = fake_cub()
    source = dl.SOURCES["birds"]
    pinned = dataclasses.replace(
        source.archive, md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest()
    )
    monkeypatch.setitem(dl.SOURCES, "birds", dataclasses.replace(source, archive=pinned))
    serve(server, source.archive.url, data)
    command.download("birds", data_dir=str(tmp_path), mirror=server.url)
    out = tmp_path / "birds"
    assert {d.name: len(jpgs(d)) for d in out.iterdir() if d.is_dir()} == {
        "Black_footed_Albatross": 3,
        "Brown_Pelican": 2,
    }
    assert "Caltech-UCSD Birds-200-2011" in (out / "SOURCE.md").read_text()


def test_flat_leaves_archive_is_not_guessed(server, tmp_path):
    serve(
        server, dl.SOURCES["leaves"].archive.url, make_tar({f"image_{i:04d}.jpg": image_bytes() for i in range(1, 4)})
    )
    with pytest.raises(TLBenchError, match="cannot label them"):
        command.download("leaves", data_dir=str(tmp_path), mirror=server.url)
    assert not (tmp_path / "leaves").exists()


def test_fetch_retries_and_resumes_after_dropped_connection(server, tmp_path):
    data = os.urandom(200_000)
    url = serve(server, "https://example.org/files/blob.bin", data)
    server.drop_after["/files/blob.bin"] = 70_000
    digest = dl.fetch(url, tmp_path / "blob.bin", sha256=hashlib.sha256(data).hexdigest(), backoff=0, progress=False)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert server.log == [("/files/blob.bin", None), ("/files/blob.bin", "bytes=70000-")]


def test_fetch_404_is_not_retried(server, tmp_path):
    with pytest.raises(TLBenchError, match="HTTP 404"):
        dl.fetch(f"{server.url}/missing.tar", tmp_path / "missing.tar", backoff=0, progress=False)
    assert len(server.log) == 1


def test_fetch_size_mismatch_deletes_download(server, tmp_path):
    url = serve(server, "https://example.org/a.tar", b"x" * 100)
    with pytest.raises(TLBenchError, match="expected 99"):
        dl.fetch(url, tmp_path / "a.tar", size=99, progress=False)
    assert not list(tmp_path.iterdir())


def test_mirror_replaces_scheme_host_and_prefixes_path():
    url = "https://data.caltech.edu/records/x/files/CUB_200_2011.tgz?download=1"
    assert (
        dl.apply_mirror(url, "http://127.0.0.1:8000/cache/")
        == "http://127.0.0.1:8000/cache/records/x/files/CUB_200_2011.tgz?download=1"
    )
    assert dl.apply_mirror(url, None) == url
    with pytest.raises(TLBenchError, match="--mirror"):
        dl.apply_mirror(url, "127.0.0.1:8000")


# --------------------------------------------------------------------------------------------------- safe extraction


def tar_with(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        bundle.addfile(ok, io.BytesIO(b"ok"))  # a harmless member first: refusal must still write nothing
        info.size = len(data)
        bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        (tarfile.TarInfo("../evil"), "unsafe member path"),
        (tarfile.TarInfo("a/../../evil"), "unsafe member path"),
        (tarfile.TarInfo("/tmp/evil"), "unsafe member path"),
        (link("etc", "/etc", tarfile.SYMTYPE), "pointing outside"),
        (link("a/up", "../../etc/passwd", tarfile.SYMTYPE), "pointing outside"),
        (link("hard", "../outside", tarfile.LNKTYPE), "pointing outside"),
        (device("null"), "device"),
    ],
)
def test_safe_extract_refuses_malicious_tar(tmp_path, member, message):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(tar_with(member, b"pwned" if member.isfile() else b""))
    dest = tmp_path / "out"
    with pytest.raises(TLBenchError, match=message):
        dl.safe_extract(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil").exists()


def test_safe_extract_allows_internal_symlink(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(tar_with(link("alias.txt", "ok.txt", tarfile.SYMTYPE)))
    dl.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "alias.txt").read_text() == "ok"


def test_safe_extract_refuses_zip_traversal(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../evil.txt", b"pwned")
    with pytest.raises(TLBenchError, match="unsafe member path"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------- Open Images


def oid(tag: str) -> str:
    """An Open Images ImageID (16 hex digits) that starts with ``tag``: a0.. fried, b0.. soup, c0 d0 e0 others."""
    return f"{tag:0<16}"


def serve_open_images(server, extra_rows: tuple[tuple[str, str, int], ...] = ()) -> None:
    files = dl.OPEN_IMAGES_FILES
    descriptions = "LabelName,DisplayName\n/m/fried,Fried noodles\n/m/soup,Noodle Soup\n/m/pizza,Pizza\n"
    rows = [(oid(f"a{i}"), "/m/fried", 1) for i in range(6)] + [(oid(f"b{i}"), "/m/soup", 1) for i in range(6)]
    rows += [(oid("c0"), "/m/fried", 0), (oid("d0"), "/m/fried", 1), (oid("d0"), "/m/soup", 1)]
    rows += [(oid("e0"), "/m/pizza", 1), *extra_rows]
    labels = "ImageID,Source,LabelName,Confidence\n" + "".join(f"{i},verification,{m},{c}\n" for i, m, c in rows)
    serve(server, files.class_descriptions.url, descriptions.encode())
    serve(server, files.image_labels.url, labels.encode())
    for tag in ["a0", "a1", "a3", "a4", "a5", "b0", "b2", "b3", "b4", "c0", "d0", "e0"]:  # a2, b1: 404
        serve(server, files.image_url.format(image_id=oid(tag)), image_bytes())
    serve(server, files.image_url.format(image_id=oid("b2")), b"<html>gone</html>")  # 200 but not an image


def test_cli_open_images_cap_and_failure_report(server, tmp_path):
    serve_open_images(server)
    result = run_download("noodles", "--data_dir", str(tmp_path), "--mirror", server.url, "--per_class", "3")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "noodles"
    assert jpgs(out / "fried_noodles") == [f"{oid(t)}.jpg" for t in ("a0", "a1", "a3")]  # a2 failed, next taken
    assert jpgs(out / "noodle_soup") == [f"{oid(t)}.jpg" for t in ("b0", "b3", "b4")]
    with (out / "failed_images.csv").open() as file:
        report = {row["image_id"]: row for row in csv.DictReader(file)}
    assert set(report) == {oid("a2"), oid("b1"), oid("b2")}
    assert "HTTP 404" in report[oid("a2")]["error"]
    assert report[oid("a2")]["url"].startswith(f"{server.url}/train/{oid('a2')}.jpg")
    assert "not an image" in report[oid("b2")]["error"]
    requested = {path for path, _ in server.log}
    assert not requested & {f"/train/{oid(t)}.jpg" for t in ("c0", "d0", "e0", "a5")}
    assert "fried_noodles: 3" in (out / "SOURCE.md").read_text()


def test_open_images_missing_display_name_names_closest(tmp_path):
    descriptions = tmp_path / "classes.csv"
    descriptions.write_text("LabelName,DisplayName\n/m/1,Border Collie\n/m/2,Bernese mountain dog\n")
    with pytest.raises(TLBenchError, match="closest names: border collie"):
        dl.resolve_open_images_labels(descriptions, [dl.OpenImagesClass("border_collie", ("Border colly",))])


def test_fetch_replaces_damaged_cached_file(server, tmp_path):
    data = b"archive bytes" * 100
    url = serve(server, "https://example.org/a.tar", data)
    (tmp_path / "a.tar").write_bytes(b"corrupted")
    assert dl.fetch(url, tmp_path / "a.tar", sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert (tmp_path / "a.tar").read_bytes() == data


def test_cli_download_bar_on_stderr_only_when_asked(server, tmp_path):
    data = fake_leaves()
    serve(server, dl.SOURCES["leaves"].archive.url, data)
    quiet = run_download("leaves", "--data_dir", str(tmp_path / "quiet"), "--mirror", server.url)
    assert quiet.returncode == 0 and quiet.stderr == ""  # captured, not a terminal: no bar in logs
    shown = run_download("leaves", "--data_dir", str(tmp_path / "shown"), "--mirror", server.url, "--progress", "true")
    assert shown.returncode == 0, shown.stderr
    assert "leaves.tar: 100%" in shown.stderr and "%|" not in shown.stdout


# --------------------------------------------------------------------------------------------------- hostile downloads


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_traversal_image_id_refused_nothing_outside_root_written_or_deleted(server, tmp_path):
    """An ImageID ``../../../../outside/x`` once wrote beside --root, and a failed decode deleted what was there."""
    root = tmp_path / "a" / "b" / "root"  # deep enough that every escape the old code made stays in tmp_path
    precious = tmp_path / "a" / "b" / "outside" / "x.jpg"  # where the cached "../../../../outside/x" would go
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"precious, not an image")
    escapes = (("../../../../outside/x", "/m/fried", 1), ("../../../../outside/new", "/m/fried", 1))
    serve_open_images(server, escapes)
    serve(server, dl.OPEN_IMAGES_FILES.image_url.format(image_id="../../../../outside/x"), b"<html>no</html>")
    serve(server, dl.OPEN_IMAGES_FILES.image_url.format(image_id="../../../../outside/new"), image_bytes())
    before = files_under(tmp_path)
    result = run_download("noodles", "--data_dir", str(root), "--mirror", server.url, "--per_class", "10")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = error_lines(result)
    assert "oidv6-train-annotations-human-imagelabels.csv" in line and "'../../../../outside/x'" in line
    assert "delete it and rerun" in line
    after = files_under(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("a/b/root/")} == before  # nothing written or deleted
    assert not (root / "noodles").exists() and not (root / ".noodles.partial").exists()
    assert not any("outside" in path for path, _ in server.log)  # refused before any image was fetched


def test_image_path_outside_its_folder_is_refused_before_download_or_delete(server, tmp_path):
    """The second line of defence, behind the ImageID pattern: every path is resolved and must stay in its folder."""
    precious = tmp_path / "outside" / "x.jpg"
    precious.parent.mkdir()
    precious.write_bytes(b"precious")
    serve(server, dl.OPEN_IMAGES_FILES.image_url.format(image_id="../../outside/x"), b"<html>no</html>")
    with pytest.raises(TLBenchError, match="leads outside"):
        dl.download_open_images(
            {"fried_noodles": ["../../outside/x"]},
            dl.OPEN_IMAGES_FILES.image_url,
            tmp_path / "root" / "out",
            tmp_path / "root" / "cache",
            per_class=1,
            mirror=server.url,
            backoff=0,
        )
    assert precious.read_bytes() == b"precious"
    assert server.log == []


def leeds_with(extra: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """``fake_leeds()`` plus ``extra`` members: a genuine-looking archive that also carries a payload."""
    buffer = io.BytesIO(fake_leeds())
    with zipfile.ZipFile(buffer, "a", compression=compression) as bundle:
        for name, data in extra.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload, options, limit",
    [
        (b"\0" * 20_000_000, (), "4,000,000,000 bytes or 100 times"),  # a bomb: 20 MB of zeros deflate to 20 KB
        (os.urandom(2_000_000), ("--max_extract_gb", "0.001"), "1,000,000 bytes or 100 times"),  # 2 MB, cap 1 MB
    ],
    ids=["ratio", "bytes"],
)
def test_cli_archive_over_the_extraction_cap_is_refused(server, tmp_path, payload, options, limit):
    archive = leeds_with({"leedsbutterfly/padding.bin": payload})
    serve(server, dl.SOURCES["butterflies"].archive.url, archive)
    result = run_download("butterflies", "--data_dir", str(tmp_path), "--mirror", server.url, *options)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = error_lines(result)
    assert "leedsbutterfly_dataset_v1.0.zip: would unpack to" in line and "--max_extract_ratio" in line
    assert f"limit of {limit}" in line
    assert not (tmp_path / "butterflies").exists() and not (tmp_path / ".butterflies.partial").exists()
    assert not (tmp_path / ".downloads" / "butterflies" / "extracted").exists()
    assert not (tmp_path / ".downloads" / dl.TRUST_FILE).exists()  # a refused archive is never trusted


def test_extraction_failing_part_way_leaves_no_folder(tmp_path):
    """A member whose bytes are damaged fails its CRC mid-extraction: one line, and nothing half-extracted."""
    data = bytearray(leeds_with({"leedsbutterfly/z_last.txt": b"text " * 1000}, zipfile.ZIP_STORED))
    start = data.index(b"text text")
    data[start : start + 4] = b"TEXT"
    archive = tmp_path / "damaged.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(TLBenchError, match="damaged.zip: extraction failed .*delete the archive"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_first_download_is_trusted_and_a_changed_archive_refused(server, tmp_path):
    """No published checksum for leaves: the first download's SHA-256 is printed and recorded, later ones must match."""
    first = fake_leaves()
    url = dl.SOURCES["leaves"].archive.url
    serve(server, url, first)
    result = run_download("leaves", "--data_dir", str(tmp_path), "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(first).hexdigest()
    assert f"trusted on first use: sha256 {digest}" in result.stdout
    trust_file = tmp_path / ".downloads" / dl.TRUST_FILE
    assert json.loads(trust_file.read_text()) == {url: digest}
    kept = files_under(tmp_path / "leaves")

    serve(server, url, make_tar({f"leaves/species_{s}/evil_{s}.jpg": image_bytes() for s in "abc"}))  # changed
    result = run_download("leaves", "--data_dir", str(tmp_path), "--mirror", server.url, "--force", "true")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = error_lines(result)
    assert "leaves.tar: SHA-256 is" in line and f"recorded {digest} in {trust_file}" in line
    assert "delete its line there and rerun" in line
    assert files_under(tmp_path / "leaves") == kept  # --force replaces a dataset only with a complete new one
    assert not (tmp_path / ".leaves.partial").exists()
    assert not list((tmp_path / ".downloads" / "leaves").glob("leaves.tar*"))  # the changed bytes are deleted
    assert json.loads(trust_file.read_text()) == {url: digest}
