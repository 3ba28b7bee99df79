"""``tlbench serve`` against a real uvicorn process on 127.0.0.1, its limits in isolation, and the page in Chromium."""

import asyncio
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO
from tests.reliability.test_images import bomb_png
from tlbench.export import export_bundle
from tlbench.serve.batching import MicroBatcher
from tlbench.serve.limits import Busy, ConcurrencyLimit

CLASSES = ["class_0", "class_1", "class_2"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """``(base URL, process)`` of ``python -m tlbench serve BUNDLE`` with a 1 MiB upload cap and 2 inference
    slots."""
    bundle, _ = export_bundle(tiny_run, output=tmp_path_factory.mktemp("serve") / "bundle")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "serve",
        str(bundle),
        "--port",
        str(port),
        "--max_upload_mb",
        "1",
        "--max_concurrency",
        "2",
        "--queue_timeout",
        "0.05",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail(f"server did not start: {process.stdout.read()[-2000:]}")
    yield url, process
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


def memory_mib(pid: int, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak so far) of a process, from /proc."""
    status = open(f"/proc/{pid}/status").read()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def grey16_png(width: int, height: int) -> bytes:
    """A valid mid-grey 16-bit greyscale PNG, compressed row by row: 9400x9400 is about 200 KB on the wire and
    170 MiB of pixels."""
    row = b"\x00" + b"\x80\x00" * width  # filter byte, then big-endian 32768s
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def png_bytes(size: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def predict(url: str, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (filename, data, content_type)}, timeout=30)


def test_good_image_gets_top_k_probabilities(server):
    response = predict(server, png_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {p["label"] for p in answer["predictions"]} == set(CLASSES)
    probs = [p["prob"] for p in answer["predictions"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    assert answer["model"]["backbone"] == "cnn1" and answer["elapsed_ms"] > 0


def test_model_and_health(server):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    model = httpx.get(f"{server}/model").json()
    assert model["classes"] == CLASSES and model["backbone"] == "cnn1" and model["preprocessing"]["input_size"] == 32
    assert model["source"] == "bundle"  # a name, not the server's file-system path
    page = httpx.get(f"{server}/")
    assert (
        page.headers["content-type"].startswith("text/html")
        and "default-src 'none'" in page.headers["content-security-policy"]
    )


def test_oversized_body_is_413_with_or_without_content_length(server):
    big = png_bytes() + os.urandom(1_200_000)
    declared = predict(server, big)
    assert declared.status_code == 413 and "1 MiB" in declared.json()["error"]

    boundary = "tlbenchboundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks():
        yield head
        for _ in range(40):  # 40 x 64 KiB: 2.5 MiB, never announced up front
            yield os.urandom(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    request = httpx.Request(
        "POST",
        f"{server}/predict",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    with httpx.Client(timeout=30) as client:
        streamed = client.send(request)
    assert streamed.status_code == 413 and "error" in streamed.json()


@pytest.mark.parametrize(
    "data, content_type",
    [
        (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>',
            "image/svg+xml",
        ),
        (b"<!doctype html><html><script>alert(1)</script></html>", "image/png"),
        (b"just some text", "text/plain"),
        (b"", "image/png"),
    ],
)
def test_non_images_are_415(server, data, content_type):
    response = predict(server, data, content_type=content_type)
    assert response.status_code == 415 and "not a supported image" in response.json()["error"]


def test_bomb_header_is_422(server, tmp_path):
    response = predict(server, bomb_png(tmp_path / "bomb.png", 100_000, 100_000).read_bytes())
    assert response.status_code == 422 and "decompression bomb" in response.json()["error"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from /proc")
def test_16_bit_png_bombs_at_once_keep_the_server_within_its_memory_budget(served):
    """Two 200 KB PNGs of 9400x9400 16-bit pixels (under MAX_PIXELS; 2.2 GB each to decode before) at once, with
    the fixture's two slots, then a 4000x4000 16-bit PNG that fits the budget and is decoded reduced."""
    url, process = served
    predict(url, png_bytes())  # the model is loaded and has run once
    before = memory_mib(process.pid, "VmRSS")
    bomb = grey16_png(9400, 9400)
    assert len(bomb) < 400_000
    with ThreadPoolExecutor(2) as pool:
        bombs = list(pool.map(lambda _: predict(url, bomb), range(2)))
    for response in bombs:
        assert response.status_code == 413, response.text
        assert response.json()["error"].startswith("image too large to decode here: 9400x9400 PNG I;16")
    fits = predict(url, grey16_png(4000, 4000))
    assert fits.status_code == 200, fits.text
    peak = memory_mib(process.pid, "VmHWM")
    assert peak - before < 300, (before, peak)


def test_client_file_name_is_never_a_path(server):
    image = png_bytes(seed=3)
    normal = predict(server, image).json()["predictions"]
    traversal = predict(server, image, filename="../../etc/passwd.png")
    absolute = predict(server, b"not an image", filename="/etc/passwd")
    assert traversal.status_code == 200 and traversal.json()["predictions"] == normal
    assert absolute.status_code == 415


def test_concurrent_burst_is_answered_200_or_429_as_json(server):
    image = png_bytes(size=900, fmt="JPEG")  # a few ms of decoding each, so the two slots fill up
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: predict(server, image, content_type="image/jpeg"), range(16)))
    assert {r.status_code for r in responses} <= {200, 429}
    assert any(r.status_code == 200 for r in responses)
    for response in responses:
        answer = response.json()
        assert (
            ("predictions" in answer)
            if response.status_code == 200
            else ("busy" in answer["error"] and response.headers["retry-after"] == "1")
        )


def test_concurrency_limit_times_out_to_busy_then_frees():
    async def scenario():
        limit = ConcurrencyLimit(slots=1, wait_s=0.05)
        async with limit.slot():
            with pytest.raises(Busy):
                async with limit.slot():
                    pass
        async with limit.slot():  # released: free again
            return True

    assert asyncio.run(scenario())


@pytest.mark.parametrize("max_batch, expected_calls", [(8, [4]), (1, [1, 1, 1, 1])])
def test_micro_batcher_shares_one_forward_pass(max_batch, expected_calls):
    calls = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return batch * 10

    async def scenario():
        batcher = MicroBatcher(forward, max_batch=max_batch, window_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(torch.tensor([float(i)])) for i in range(4)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert calls == expected_calls
    assert [float(r) for r in results] == [0.0, 10.0, 20.0, 30.0]  # every request gets its own row back


def test_page_in_headless_chromium_shows_bars(server, shared_data, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    bird = next((shared_data / "birds10").glob("*/*.jpg"))
    screenshot = tmp_path / "serve_page.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server)
        page.wait_for_function("document.getElementById('about').textContent.includes('cnn1')")
        page.set_input_files("#file", str(bird))
        page.wait_for_selector(".prediction .fill", timeout=20_000)
        labels = page.locator(".prediction .label").all_text_contents()
        widths = page.locator(".prediction .fill").evaluate_all(
            "bars => bars.map(bar => bar.getBoundingClientRect().width)"
        )
        assert page.locator("#preview").evaluate("img => img.complete && img.naturalWidth > 0")
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert labels and set(labels) <= set(CLASSES)
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)
    if os.environ.get("TLBENCH_ARTIFACTS"):
        os.makedirs(os.environ["TLBENCH_ARTIFACTS"], exist_ok=True)
        shutil.copy(screenshot, os.environ["TLBENCH_ARTIFACTS"])
    assert screenshot.stat().st_size > 0


def test_micro_batcher_waits_only_for_requests_on_their_way():
    """A lone request runs at once despite a long window; one announced as decoding is waited for and shares the
    pass; one that withdraws (its upload failed to decode) stops being waited for."""
    calls = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return batch

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(forward, max_batch=8, window_ms=5000)
        batcher.start()
        start = loop.time()
        await batcher.submit(torch.tensor([1.0]))
        alone = loop.time() - start

        async def decoding_then_submit() -> None:
            with batcher.on_its_way() as submit:
                await asyncio.sleep(0.2)
                await submit(torch.tensor([2.0]))

        late = loop.create_task(decoding_then_submit())
        await asyncio.sleep(0)  # it is announced before the next request arrives
        await asyncio.gather(batcher.submit(torch.tensor([3.0])), late)
        with batcher.on_its_way():
            pass  # withdrawn without submitting
        start = loop.time()
        await batcher.submit(torch.tensor([4.0]))
        withdrawn = loop.time() - start
        await batcher.stop()
        return alone, withdrawn

    alone, withdrawn = asyncio.run(scenario())
    assert alone < 1.0 and withdrawn < 1.0, (alone, withdrawn)
    assert calls == [1, 2, 1]
