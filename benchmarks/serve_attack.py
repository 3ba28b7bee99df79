"""``tlbench serve`` under attack: one live server, five attacks in turn, each while a separate client process
measures ``/health`` and ``/predict``; then the speed targets with the token on.

    python benchmarks/serve_attack.py MODEL [--idle 10000] [--seconds 12]

MODEL is a bundle, run directory or checkpoint. The server runs as a user starts it (``python -m tlbench serve
MODEL``, default limits, token from ``TLBENCH_TOKEN``). Attacks, each for ``--seconds``:

- bombs: 8 clients (the default ``--max_concurrency``) uploading, in turn, a 200 KB 9400x9400 16-bit PNG (over
  the decoding budget), the largest 16-bit PNG and RGBA PNG inside it, and a progressive 6000x4000 JPEG (refused);
- slow: 200 clients sending a request head one byte a second (reconnecting when dropped);
- idle: ``--idle`` connections opened at once and held, sending nothing;
- stalled: 40 uploads declaring 19 MiB that send 18 MiB and stop;
- parts: 4 clients sending bodies of 300,000 tiny form fields (19.5 MB, under the 20 MiB upload cap).

Per attack: ``/health`` latency (p50, p99, max, failures) and ``/predict`` answers (200 / refused with 429 or 503
/ other) seen by the probe, the server's peak and after-attack RSS, whether it crashed, and the recovery time
from the attack's end until ``/health`` answers under 100 ms and ``/predict`` succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TOKEN = "attack-benchmark-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOUNDARY = "attackboundary"
DECODE_BUDGET = 48 * 2**20  # tlbench serve's default --max_decode_mb


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split(f"{field}:")[1].split()[0]) / 1024


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def grey16_png(width: int, height: int) -> bytes:
    """A mid-grey 16-bit PNG compressed row by row (9400x9400: about 200 KB)."""
    row = b"\x00" + b"\x80\x00" * width
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def photo() -> bytes:
    """A 640x480 JPEG of smooth noise, as benchmarks/serve_load.py uploads."""
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels).resize((640, 480), Image.Resampling.BICUBIC), "JPEG", quality=90)


def request_head(length: int) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def budget_side(bytes_per_pixel: int) -> int:
    """The side of the largest square image the default decoding budget accepts at ``bytes_per_pixel``."""
    return int((DECODE_BUDGET / bytes_per_pixel) ** 0.5 * 0.99)


def start_server(model: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TLBENCH_TOKEN": TOKEN}
    command = [sys.executable, "-m", "tlbench", "serve", model, "--port", str(port)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"server exited with status {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("server did not start within 90 s")


def probe(url: str, image: bytes, stop: multiprocessing.Event, results: multiprocessing.Queue) -> None:
    """In its own process, so the attack's client work cannot delay it: /health every 20 ms and /predict
    back to back, until ``stop``; puts (health latencies, health failures, predict statuses)."""
    health: list[float] = []
    failures = 0
    statuses: list[int | str] = []

    def predicting() -> None:
        with httpx.Client(timeout=10, headers=AUTH) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post(f"{url}/predict", files={"file": ("x.jpg", image)}).status_code)
                except httpx.HTTPError as error:
                    statuses.append(type(error).__name__)
                time.sleep(0.05)

    worker = threading.Thread(target=predicting)
    worker.start()
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get(f"{url}/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                health.append(time.perf_counter() - started)
            else:
                failures += 1
            time.sleep(0.02)
    worker.join()
    results.put((health, failures, statuses))


async def bombs(port: int, seconds: float) -> None:
    uploads = [
        grey16_png(9400, 9400),  # over the decoding budget: refused from its header
        grey16_png(*[budget_side(3)] * 2),  # 16-bit, just inside it (3 bytes a pixel while decoding and reducing)
        encoded(Image.new("RGBA", [budget_side(12)] * 2, (10, 200, 30, 128)), "PNG"),  # RGBA (12 bytes a pixel)
        encoded(Image.effect_noise((6000, 4000), 40).convert("RGB"), "JPEG", progressive=True, quality=70),
    ]
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as http:
            turn = index
            while time.monotonic() < deadline:
                data = uploads[turn % len(uploads)]
                turn += 1
                try:
                    await http.post(f"http://127.0.0.1:{port}/predict", files={"file": ("x", data)})
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(client(i) for i in range(8)))


async def slow(port: int, seconds: float, clients: int = 200) -> dict:
    """Clients trickling a request head; returns the longest any connection stayed open."""
    deadline = time.monotonic() + seconds
    longest = 0.0
    head = request_head(1000)

    async def client() -> None:
        nonlocal longest
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened = time.monotonic()
            try:
                for byte in head:
                    if time.monotonic() >= deadline:
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if await _closed(reader, 1.0):
                        break
            except (ConnectionError, OSError):
                pass
            longest = max(longest, time.monotonic() - opened)
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"longest open s": round(longest, 1)}


async def _closed(reader: asyncio.StreamReader, wait: float) -> bool:
    """Waits up to ``wait`` seconds; whether the server closed the connection meanwhile."""
    try:
        return await asyncio.wait_for(reader.read(65536), wait) == b""
    except asyncio.TimeoutError:
        return False


async def idle(port: int, seconds: float, count: int) -> dict:
    """``count`` connections opened as fast as possible and held; how many the server still kept at the end."""
    opened = []
    for _ in range(count):
        try:
            opened.append(await asyncio.open_connection("127.0.0.1", port))
        except OSError:
            break
    await asyncio.sleep(seconds)
    still = 0
    for reader, writer in opened:
        still += not await _closed(reader, 0.001)
        writer.close()
    return {"opened": len(opened), "still open at end": still}


async def stalled(port: int, seconds: float, uploads: int = 40) -> dict:
    size = 19 * 2**20
    body = b"\0" * (18 * 2**20)
    answers: list[str] = []

    async def upload() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            try:
                writer.write(request_head(size))
                for start in range(0, len(body), 2**20):
                    writer.write(body[start : start + 2**20])
                    await writer.drain()
            except (ConnectionError, OSError):
                pass  # refused and closed (429) while still sending

        sending = asyncio.create_task(send())
        try:
            answer = await asyncio.wait_for(reader.read(200), seconds + 30)
            answers.append(answer.split(b" ", 2)[1].decode() if answer else "closed")
        except (ConnectionError, OSError, asyncio.TimeoutError) as error:
            answers.append(type(error).__name__)
        sending.cancel()
        writer.close()

    await asyncio.gather(*(upload() for _ in range(uploads)))
    return {"answers": ", ".join(f"{a} x{answers.count(a)}" for a in sorted(set(answers)))}


async def parts(port: int, seconds: float) -> dict:
    field = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n'
    body = (field * 300_000 + f"--{BOUNDARY}--\r\n").encode()
    deadline = time.monotonic() + seconds
    statuses: list[int | str] = []

    async def client() -> None:
        headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as http:
            while time.monotonic() < deadline:
                try:
                    response = await http.post(f"http://127.0.0.1:{port}/predict", content=body)
                    statuses.append(response.status_code)
                except httpx.HTTPError as error:  # refused (429, closing) while the body was still being sent
                    statuses.append(type(error).__name__)

    await asyncio.gather(*(client() for _ in range(4)))
    return {
        "body MB": round(len(body) / 1e6, 1),
        "answers": ", ".join(f"{s} x{statuses.count(s)}" for s in set(statuses)),
    }


def recovery(url: str, image: bytes, limit: float = 60) -> float:
    """Seconds until /health answers in under 100 ms and /predict succeeds, on fresh connections."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        try:
            begun = time.perf_counter()
            health = httpx.get(f"{url}/health", timeout=1)
            quick = health.status_code == 200 and time.perf_counter() - begun < 0.1
            if quick and httpx.post(f"{url}/predict", files={"file": ("x", image)}, headers=AUTH).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    return float("inf")


def speed(url: str, image: bytes, concurrency: int, requests: int) -> dict:
    latencies: list[float] = []

    async def run() -> float:
        async with httpx.AsyncClient(timeout=60, headers=AUTH, limits=httpx.Limits(max_connections=concurrency)) as c:
            sent = 0

            async def worker() -> None:
                nonlocal sent
                while sent < requests:
                    sent += 1
                    begun = time.perf_counter()
                    response = await c.post(f"{url}/predict", files={"file": ("x.jpg", image, "image/jpeg")})
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - begun)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return {"ok": len(latencies), "rps": len(latencies) / elapsed, "p50": statistics.median(latencies) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="bundle, run directory or .ckpt")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to open")
    parser.add_argument("--seconds", type=float, default=12, help="length of each attack")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.idle + 1000 > hard:
        raise SystemExit(f"--idle {args.idle} needs {args.idle + 1000} open files here; this machine allows {hard}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_attack_{port}.log"
    server = start_server(args.model, port, log)
    image = photo()
    for _ in range(10):  # warm-up: the first passes allocate and pick kernels
        httpx.post(f"{url}/predict", files={"file": ("x.jpg", image)}, headers=AUTH, timeout=120)
    time.sleep(1)
    idle_rss = rss_mib(server.pid)
    attacks = {
        "in-limit bombs x8": lambda: bombs(port, args.seconds),
        "200 slow clients": lambda: slow(port, args.seconds),
        f"{args.idle} idle connections": lambda: idle(port, args.seconds, args.idle),
        "40 stalled 19 MiB uploads": lambda: stalled(port, args.seconds),
        "many-part bodies x4": lambda: parts(port, args.seconds),
    }
    rows = []
    context = multiprocessing.get_context("spawn")
    for name, attack in attacks.items():
        stop, results = context.Event(), context.Queue()
        prober = context.Process(target=probe, args=(url, image, stop, results))
        prober.start()
        time.sleep(1)
        peak = [rss_mib(server.pid)]
        sampling = threading.Event()

        def sample(peak: list[float] = peak, sampling: threading.Event = sampling) -> None:
            while not sampling.is_set() and server.poll() is None:
                peak.append(rss_mib(server.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        begun = time.monotonic()
        detail = asyncio.run(attack()) or {}
        print(f"{name}: attack took {time.monotonic() - begun:.1f} s", file=sys.stderr, flush=True)
        stop.set()
        health, failures, statuses = results.get()
        prober.join()
        crashed = server.poll() is not None
        recovered = float("nan") if crashed else recovery(url, image)
        print(f"{name}: recovered in {recovered:.2f} s", file=sys.stderr, flush=True)
        time.sleep(2)
        sampling.set()
        sampler.join()
        after = float("nan") if crashed else rss_mib(server.pid)
        ok, refused = statuses.count(200), sum(s in (429, 503) for s in statuses)
        rows.append(
            {
                "attack": name,
                "health p50 ms": statistics.median(health) * 1000 if health else float("nan"),
                "health p99 ms": np.percentile(health, 99) * 1000 if health else float("nan"),
                "health max ms": max(health, default=float("nan")) * 1000,
                "health fails": failures,
                "predict 200/refused/other": f"{ok}/{refused}/{len(statuses) - ok - refused}",
                "peak RSS MiB": max(peak),
                "RSS after MiB": after,
                "crashed": "yes" if crashed else "no",
                "recovery s": recovered,
                "detail": detail,
            }
        )
        if crashed:
            break
    speeds = [] if server.poll() is not None else [speed(url, image, 8, 200), speed(url, image, 1, 100)]
    server.terminate()
    server.wait(timeout=30)
    log_lines = log.read_text().count("\n")
    print(
        f"model {args.model}; server idle RSS {idle_rss:.0f} MiB; open-file limit {hard}; server log {log_lines} lines"
    )
    print(
        f"{'attack':<28} {'health p50/p99/max ms':>22} {'fails':>5} {'predict 200/refused/other':>26}"
        f" {'peak RSS':>8} {'RSS after':>9} {'crash':>5} {'recovery s':>10}"
    )
    for row in rows:
        latency = f"{row['health p50 ms']:.1f}/{row['health p99 ms']:.1f}/{row['health max ms']:.0f}"
        print(
            f"{row['attack']:<28} {latency:>22} {row['health fails']:>5} {row['predict 200/refused/other']:>26}"
            f" {row['peak RSS MiB']:>8.0f} {row['RSS after MiB']:>9.0f} {row['crashed']:>5} {row['recovery s']:>10.2f}"
        )
    for row in rows:
        print(f"  {row['attack']}: {row['detail']}")
    if speeds:
        c8, c1 = speeds
        print(f"token on: concurrency 8: {c8['rps']:.1f} req/s ({c8['ok']} ok); concurrency 1: p50 {c1['p50']:.1f} ms")


if __name__ == "__main__":
    from common import record_results  # here: tests import this module as benchmarks.<name>

    record_results(main)
