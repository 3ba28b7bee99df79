"""``tlbench serve`` against a real uvicorn process on 127.0.0.1, its limits in isolation, and the page in Chromium."""

import asyncio
import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.serve_attack import budget_side, grey16_png  # the attack benchmark's bomb, one builder for both
from tests.conftest import REPO, run_tlbench
from tests.reliability.test_images import bomb_png
from tlbench.export import export_bundle
from tlbench.serve.batching import MicroBatcher
from tlbench.serve.limits import Busy, ConcurrencyLimit

CLASSES = ["class_0", "class_1", "class_2"]
MAX_CONNECTIONS = 40
BOUNDARY = "tlbenchboundary"
TOKEN = "s3cret-token"
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
def bundle(tiny_run, tmp_path_factory) -> Path:
    return export_bundle(tiny_run, output=tmp_path_factory.mktemp("serve") / "bundle")[0]


def launch(bundle: Path, log: Path, *options: str, env: dict | None = None) -> tuple[str, subprocess.Popen]:
    """``python -m tlbench serve BUNDLE OPTIONS`` on a free port, its output in ``log``, once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "tlbench", "serve", str(bundle), "--port", str(port), *options]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url, process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    pytest.fail(f"server did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    """``(base URL, process, log file)`` of the server with a 1 MiB upload cap, 2 inference slots, a 2 s
    request-head and 5 s body deadline and at most 40 connections."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    limits = ["--max_upload_mb", "1", "--max_concurrency", "2", "--queue_timeout", "0.05"]
    limits += ["--header_timeout", "2", "--body_timeout", "5", "--max_connections", str(MAX_CONNECTIONS)]
    url, process = launch(bundle, log, *limits)
    yield url, process, log
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def token_served(bundle, tmp_path_factory):
    """``(base URL, process)`` of a server with the default limits (8 slots) and two decoders (the default on a
    2-core machine, set so the test does not depend on the cores), whose token comes from TLBENCH_TOKEN and that
    also answers to Host ``tlbench.test``."""
    log = tmp_path_factory.mktemp("serve-log") / "token.log"
    options = ["--allowed_hosts", "tlbench.test", "--decode_workers", "2"]
    url, process = launch(bundle, log, *options, env={"TLBENCH_TOKEN": TOKEN})
    yield url, process
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def token_server(token_served) -> str:
    return token_served[0]


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def captumless_server(bundle, tmp_path_factory):
    """Base URL of a server that cannot find Captum, as if the explain extra were not installed: the
    ``sitecustomize`` first on its PYTHONPATH blocks the package before tlbench starts."""
    root = tmp_path_factory.mktemp("no-captum")
    (root / "sitecustomize.py").write_text("import sys\n\nsys.modules['captum'] = None  # hidden from this server\n")
    url, process = launch(bundle, root / "server.log", env={"PYTHONPATH": f"{root}{os.pathsep}{REPO}"})
    yield url
    process.terminate()
    process.wait(timeout=20)


def memory_mib(pid: int, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak so far) of a process, from /proc."""
    status = open(f"/proc/{pid}/status").read()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def png_bytes(size: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def predict(url: str, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (filename, data, content_type)}, timeout=30)


def explain(url: str, data: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/explain", files={"file": ("image.png", data, "image/png")}, headers=headers, timeout=60)


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
    url, process, _ = served
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


def connect(url: str) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)
    return connection


def multipart(data: bytes, extra_fields: int = 0) -> bytes:
    fields = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(extra_fields)
    )
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    return (fields + head).encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def request_head(length: int, path: str = "/predict") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_response(connection: socket.socket) -> tuple[int, bytes]:
    """Status and everything the server sent until it closed the connection or finished one response."""
    received = b""
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < content_length(received):
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    return int(received.split(b" ", 2)[1]) if received else 0, received


def content_length(received: bytes) -> int:
    for line in received.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.mark.parametrize("path", ["/predict", "/explain"])
def test_stalled_uploads_hold_the_slots_so_a_burst_gets_429(server, path):
    """The slot is taken before the body is read: two uploads stalled halfway fill both slots, every request of
    a burst arriving meanwhile gets 429 with Retry-After, and the stalled ones still succeed once they finish.
    ``/explain`` shares the slots with ``/predict``."""
    body = multipart(png_bytes(seed=5))
    stalled = [connect(server) for _ in range(2)]
    for connection in stalled:
        connection.sendall(request_head(len(body), path) + body[:100])
    time.sleep(1.0)  # both request heads parsed and waiting for their bodies, well inside the 5 s body deadline
    image = png_bytes(size=64)
    send = {"/predict": predict, "/explain": explain}[path]
    with ThreadPoolExecutor(6) as pool:
        burst = list(pool.map(lambda _: send(server, image), range(6)))
    for connection in stalled:
        connection.sendall(body[100:])
    finished = [read_response(connection)[0] for connection in stalled]
    assert [r.status_code for r in burst] == [429] * 6
    assert all("busy" in r.json()["error"] and r.headers["retry-after"] == "1" for r in burst)
    assert finished == [200, 200]
    assert predict(server, image).status_code == 200  # slots freed


def test_oversized_content_length_is_413_before_any_body_is_sent(server):
    with connect(server) as connection:
        connection.sendall(request_head(5 * 2**20))  # headers only: the body never comes
        status, received = read_response(connection)
    assert status == 413 and b"1 MiB" in received


def test_slow_clients_are_dropped_within_the_timeouts(server):
    trickling = connect(server)
    trickling.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest of the head
    silent = connect(server)  # never sends a byte
    body = multipart(png_bytes())
    slow_body = connect(server)
    slow_body.sendall(request_head(len(body)) + body[:10])
    started = time.monotonic()
    assert trickling.recv(1) == b"" and silent.recv(1) == b""  # closed by the server (socket timeout is 30 s)
    head_dropped = time.monotonic() - started
    status, received = read_response(slow_body)
    body_dropped = time.monotonic() - started
    assert head_dropped < 2 + 3, head_dropped
    assert status == 408 and b"within 5 s" in received and body_dropped < 5 + 3, body_dropped


def test_idle_connection_flood_evicts_the_oldest_and_health_still_answers(server):
    """Past the cap, connections that never sent a request are closed first, oldest first; a client's keep-alive
    connection, idle since its last request, outlives the flood."""
    health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    kept_alive = connect(server)
    kept_alive.sendall(health)
    assert read_response(kept_alive)[0] == 200
    flood = [connect(server) for _ in range(2 * MAX_CONNECTIONS)]
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200
    kept_alive.sendall(health)
    assert read_response(kept_alive)[0] == 200
    for connection in flood:
        connection.settimeout(0.2)
    closed = sum(connection.recv(1) == b"" for connection in flood[:MAX_CONNECTIONS])
    assert closed >= MAX_CONNECTIONS // 2, closed  # the first half was evicted by the second
    for connection in (kept_alive, *flood):
        connection.close()


def test_many_part_body_is_refused_after_the_cap(server):
    response = httpx.post(
        f"{server}/predict",
        content=multipart(png_bytes(), extra_fields=5000),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=30,
    )
    assert response.status_code == 400 and "more than 16 parts" in response.json()["error"]


def test_client_gone_mid_upload_is_one_log_line_not_a_traceback(served):
    url, _, log = served
    body = multipart(png_bytes(seed=9))
    with connect(url) as connection:
        connection.sendall(request_head(len(body)) + body[:50])
        time.sleep(0.5)
    deadline = time.monotonic() + 20
    while "client disconnected" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text()
    assert text.count("client disconnected during the upload") == 1 and "Traceback" not in text, text[-3000:]


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


@pytest.mark.parametrize("with_token", [False, True])
def test_page_in_headless_chromium_shows_bars(request, with_token, shared_data, tmp_path):
    """The page classifies a photo; on a server with a token it asks for the token once, then works."""
    server = request.getfixturevalue("token_server" if with_token else "server")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    bird = next((shared_data / "birds10").glob("*/*.jpg"))
    screenshot = tmp_path / ("serve_page_token.png" if with_token else "serve_page.png")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server)
        if with_token:
            page.wait_for_selector("#login:not([hidden])")
            page.fill("#token", TOKEN)
            page.click("#login button")
        # a selector, not wait_for_function: the page's CSP forbids eval, which a polled JS string needs
        page.wait_for_selector("#about:has-text('cnn1')")
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


def test_explain_returns_the_overlay_of_the_predicted_class(server):
    image = png_bytes(size=48, seed=1)
    assert httpx.get(f"{server}/model").json()["explain"] is True
    response = explain(server, image)
    assert response.status_code == 200, response.text
    answer = response.json()
    top = predict(server, image).json()["predictions"][0]
    assert answer["label"] == top["label"] and answer["prob"] == pytest.approx(top["prob"], abs=1e-4)
    assert answer["layer"] == "stages" and answer["elapsed_ms"] > 0
    with Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"]))) as overlay:
        assert overlay.format == "PNG" and overlay.size == (answer["width"], answer["height"]) == (48, 48)
        assert np.asarray(overlay).shape == (48, 48, 3)
    assert 0 <= answer["peak"]["x"] < 48 and 0 <= answer["peak"]["y"] < 48


def test_explain_refuses_what_predict_refuses(server, tmp_path):
    assert explain(server, b"just some text").status_code == 415
    bomb = explain(server, bomb_png(tmp_path / "bomb.png", 100_000, 100_000).read_bytes())
    assert bomb.status_code == 422 and "decompression bomb" in bomb.json()["error"]
    too_large = explain(server, png_bytes() + os.urandom(1_200_000))
    assert too_large.status_code == 413 and "1 MiB" in too_large.json()["error"]
    unnamed = httpx.post(f"{server}/explain", files={"image": ("x.png", png_bytes())}, timeout=30)
    assert unnamed.status_code == 400 and "'file'" in unnamed.json()["error"]


def test_without_captum_explain_is_501_with_the_pip_command_and_predict_still_works(captumless_server):
    assert httpx.get(f"{captumless_server}/model").json()["explain"] is False
    refused = explain(captumless_server, png_bytes())
    assert refused.status_code == 501 and refused.headers["connection"] == "close"
    assert refused.json() == {
        "error": "explanations need Captum, which is not installed; pip install 'tlbench[explain]' (or pip install"
        " captum)"
    }
    assert predict(captumless_server, png_bytes()).status_code == 200


def test_page_why_toggle_shows_the_grad_cam_overlay(server, captumless_server, shared_data, tmp_path):
    """ "why?" swaps the photo for the overlay the server explained (a blob: image, which the page's CSP allows)
    and back, without a console error; a server without Captum shows no toggle."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    bird = next((shared_data / "birds10").glob("*/*.jpg"))
    screenshot = tmp_path / "serve_page_why.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server)
        page.wait_for_selector("#about:has-text('cnn1')")
        page.set_input_files("#file", str(bird))
        page.wait_for_selector(".prediction .fill", timeout=20_000)
        with page.expect_response(f"{server}/explain") as explained:
            page.check("#why")
        answer = explained.value.json()
        page.wait_for_selector("#overlay", state="visible", timeout=20_000)
        page.wait_for_selector("#status:has-text('why')")
        overlay = page.locator("#overlay").evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
        preview_shown = page.locator("#preview").is_visible()
        page.screenshot(path=str(screenshot), full_page=True)
        page.uncheck("#why")
        page.wait_for_selector("#preview", state="visible")
        overlay_after = page.locator("#overlay").is_visible()
        page.goto(captumless_server)
        page.wait_for_selector("#about:has-text('cnn1')")
        toggle_without_captum = page.locator("#why-toggle").is_visible()
        browser.close()
    assert overlay == [True, answer["width"], answer["height"]] and not preview_shown
    assert not overlay_after and not toggle_without_captum
    assert not errors, errors
    if os.environ.get("TLBENCH_ARTIFACTS"):
        os.makedirs(os.environ["TLBENCH_ARTIFACTS"], exist_ok=True)
        shutil.copy(screenshot, os.environ["TLBENCH_ARTIFACTS"])


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


def test_token_is_required_from_the_environment_and_hosts_are_checked(token_server):
    image = png_bytes()
    assert httpx.get(f"{token_server}/health").status_code == 200  # open: the page and /health
    assert httpx.get(f"{token_server}/").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = httpx.get(f"{token_server}/model", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", headers
        for path in ("/predict", "/explain"):
            upload = httpx.post(f"{token_server}{path}", files={"file": ("x.png", image)}, headers=headers)
            assert upload.status_code == 401 and "token" in upload.json()["error"], path
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{token_server}/model", headers=bearer).json()["classes"] == CLASSES
    answer = httpx.post(f"{token_server}/predict", files={"file": ("x.png", image)}, headers=bearer, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3
    assert explain(token_server, image, headers=bearer).status_code == 200
    for host, status in [("tlbench.test:8000", 200), ("localhost", 200), ("[::1]:1", 200), ("evil.example", 400)]:
        response = httpx.get(f"{token_server}/model", headers={**bearer, "Host": host})
        assert response.status_code == status, host
    rebound = httpx.get(f"{token_server}/health", headers={"Host": "attacker.example:8000"})
    assert rebound.status_code == 400 and "--allowed_hosts attacker.example" in rebound.json()["error"]


def test_network_bind_without_token_refuses_to_start(tmp_path):
    done = run_tlbench(
        "serve", str(tmp_path / "model"), "--host", "0.0.0.0", cwd=tmp_path, timeout=120, env={"TLBENCH_TOKEN": ""}
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 opens the server to the network: give it a token (--token, or TLBENCH_TOKEN in the"
        " environment) or run it open to anyone on purpose with --open true"
    ]


@pytest.mark.parametrize(
    "limits, message",
    [
        ({"max_batch": 0}, "--max_batch 0 is out of range; pass --max_batch 1 or more"),
        ({"body_timeout": 0.0}, "--body_timeout 0.0 is out of range; pass --body_timeout more than 0"),
        ({"top_k": 0, "decode_workers": -1}, "--decode_workers -1 is out of range; pass --decode_workers 0 or more"),
    ],
)
def test_a_limit_out_of_range_names_its_flag(tmp_path, limits, message):
    """Checked before the model is read: the first flag out of range, in the order of --help, and what it takes."""
    from tlbench.commands.serve import serve
    from tlbench.errors import TLBenchError

    with pytest.raises(TLBenchError) as refused:
        serve(str(tmp_path / "no_model"), **limits)
    assert str(refused.value) == message


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="resets and reads peak memory in /proc")
def test_a_burst_of_in_limit_bombs_decodes_two_at_a_time_within_the_memory_budget(token_served):
    """Eight of the largest images the default decoding budget accepts, sent at once to a server with the default
    8 slots (16-bit PNGs of about 4,000 x 4,000 and RGBA PNGs of about 2,000 x 2,000, 48 MiB each to decode): all
    are classified, while the peak memory grows by about two decodes' worth (140 MiB measured), not eight (300)."""
    url, process = token_served
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    grey16 = grey16_png(budget_side(3), budget_side(3))  # the budget's bytes a pixel, as the benchmark's bombs
    rgba = io.BytesIO()
    Image.new("RGBA", [budget_side(12)] * 2, (10, 200, 30, 128)).save(rgba, "PNG")
    uploads = [grey16, rgba.getvalue()] * 4
    httpx.post(f"{url}/predict", files={"file": ("x.png", png_bytes())}, headers=bearer, timeout=30)
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current size
    before = memory_mib(process.pid, "VmRSS")

    def upload(data: bytes) -> httpx.Response:
        return httpx.post(f"{url}/predict", files={"file": ("b.png", data)}, headers=bearer, timeout=60)

    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(upload, uploads))
    assert [answer.status_code for answer in answers] == [200] * len(uploads), answers[0].text
    growth = memory_mib(process.pid, "VmHWM") - before
    assert growth < 220, growth
