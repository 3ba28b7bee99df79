"""Load test of ``tlbench serve``: requests/s and p50/p95 latency, micro-batching on vs off, side by side.

    python benchmarks/serve_load.py MODEL [--image photo.jpg] [--requests 200] [--concurrency 1,4,8]

MODEL is a bundle, run directory or checkpoint. For each mode the server is started on 127.0.0.1 in its own
process (as a user runs it), warmed up, then sent ``--requests`` uploads per concurrency level by that many
client tasks, each level stopping early at ``--time_limit`` seconds. The server gets enough inference slots that
no request is refused, so the table measures inference and batching, not the 429 policy.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_image() -> bytes:
    """A 640x480 JPEG of smooth noise: a phone-photo-sized upload without needing a file."""
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((640, 480), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def start_server(model: str, max_batch: int, window_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "serve",
        model,
        "--port",
        str(port),
        "--max_batch",
        str(max_batch),
        "--batch_window_ms",
        str(window_ms),
        "--max_concurrency",
        "64",
        "--queue_timeout",
        "60",
    ]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("server did not start within 90 s")


async def load(url: str, image: bytes, requests: int, concurrency: int, time_limit: float) -> dict:
    """Send up to ``requests`` uploads from ``concurrency`` tasks; latencies of the 200s, count of the others."""
    latencies: list[float] = []
    failures = 0
    sent = 0
    deadline = time.perf_counter() + time_limit

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, failures
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            started = time.perf_counter()
            response = await client.post(f"{url}/predict", files={"file": ("image.jpg", image, "image/jpeg")})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    return {
        "ok": len(latencies),
        "failed": failures,
        "rps": len(latencies) / elapsed,
        "p50": quantiles[9] * 1000,
        "p95": quantiles[18] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="bundle, run directory or .ckpt")
    parser.add_argument("--image", type=Path, help="image to upload (default: a generated 640x480 JPEG)")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated client concurrency levels")
    parser.add_argument("--time_limit", type=float, default=30, help="seconds per level at most")
    parser.add_argument("--max_batch", type=int, default=8, help="micro-batch size of the 'on' mode")
    parser.add_argument("--window_ms", type=float, default=5, help="micro-batch window of the 'on' mode")
    args = parser.parse_args()
    image = args.image.read_bytes() if args.image else default_image()
    levels = [int(level) for level in args.concurrency.split(",")]
    rows = []
    for mode, max_batch in (("off", 1), ("on", args.max_batch)):
        process, url = start_server(args.model, max_batch, args.window_ms)
        try:
            asyncio.run(load(url, image, 5, 1, 30))  # warm-up: first passes allocate and pick kernels
            for level in levels:
                rows.append((level, mode, asyncio.run(load(url, image, args.requests, level, args.time_limit))))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(
        f"model {args.model}, image {len(image)} bytes,"
        f" micro-batch on = max_batch {args.max_batch}, window {args.window_ms:g} ms"
    )
    print(f"{'concurrency':>11} {'batching':>8} {'ok':>5} {'failed':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7}")
    for level, mode, result in sorted(rows, key=lambda row: (row[0], row[1])):
        print(
            f"{level:>11} {mode:>8} {result['ok']:>5} {result['failed']:>6} {result['rps']:>7.1f}"
            f" {result['p50']:>7.1f} {result['p95']:>7.1f}"
        )


if __name__ == "__main__":
    from common import record_results  # here: tests import this module as benchmarks.<name>

    record_results(main)
