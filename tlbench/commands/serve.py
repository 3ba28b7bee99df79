"""``tlbench serve MODEL``: a web page and JSON API classifying uploaded images with a trained model."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

from tlbench.errors import TLBenchError
from tlbench.models.engine_name import EngineName

TOKEN_VARIABLE = "TLBENCH_TOKEN"


def return_freed_memory() -> None:
    """Make glibc give large freed buffers back to the system at once.

    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, after which decoded images
    come from the heap and stay in the server's RSS after the request; pinning it at 1 MiB keeps image buffers
    in their own mappings, released when freed, so the server returns to its idle size after a burst.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 2**20)  # M_MMAP_THRESHOLD
        except OSError:  # not glibc (musl): nothing to tune
            pass


def check_ranges(*limits: tuple[str, float, float, bool]) -> None:
    """``(flag, value, lowest, lowest allowed)`` in order; the first value out of range is one line naming its flag
    and the values it takes, so a user fixes the flag they got wrong rather than reading every rule."""
    for flag, value, lowest, inclusive in limits:
        if value < lowest or (value == lowest and not inclusive):
            rule = f"{lowest} or more" if inclusive else f"more than {lowest}"
            raise TLBenchError(f"--{flag} {value} is out of range; pass --{flag} {rule}")


def serve(
    model: str,
    phase: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 20,
    max_decode_mb: float = 48,
    max_concurrency: int = 8,
    decode_workers: int = 0,
    queue_timeout: float = 1.0,
    top_k: int = 5,
    max_batch: int = 8,
    batch_window_ms: float = 5.0,
    engine: EngineName = "auto",
    header_timeout: float = 10.0,
    body_timeout: float = 15.0,
    max_connections: int = 1000,
    token: str | None = None,
    open: bool = False,
    allowed_hosts: str = "",
) -> None:
    """Serve MODEL at http://HOST:PORT/: the page, POST /predict, POST /explain, GET /model and GET /health.

    Uploads go in the multipart field "file". /explain (the page's "why?") returns the Grad-CAM overlay and needs
    tlbench[explain] (else 501).

    Args:
        model: a bundle (tlbench export), a run directory or a .ckpt file.
        phase: head or finetune for a run directory (default: the final model, metrics.json "final").
        host: interface to listen on; 127.0.0.1 keeps it on this machine, 0.0.0.0 opens it to the network.
        port: TCP port.
        max_upload_mb: largest request body accepted; larger uploads get 413 while streaming.
        max_decode_mb: pixel memory one image may take to decode (JPEGs are decoded at reduced scale and other
            images reduced right after decoding, to twice the model's resize size); an image that would need
            more, such as a small PNG claiming 9400x9400 16-bit pixels, gets 413 before it is decoded.
        max_concurrency: images read, decoded and classified at once; more wait (see queue_timeout).
        decode_workers: of those, images decoding at once (0: one per usable core); the rest wait their turn,
            which bounds a burst's pixel memory to decode_workers * max_decode_mb.
        queue_timeout: seconds a request waits for a free slot before it gets 429 (Retry-After: 1).
        top_k: predictions returned per image.
        max_batch: most concurrent requests sharing one forward pass; 1 turns micro-batching off.
        batch_window_ms: how long the first queued request waits for others to join its batch.
        engine: auto (ONNX Runtime on a CPU, torch on a GPU), torch or onnxruntime; a bundle's model.onnx is used
            when present, else the model is exported on the first request (and cached).
        header_timeout: seconds a connection may take to send a request head (from opening, or from its previous
            response); slower ones are closed, however they trickle.
        body_timeout: seconds an upload may take from its request head to its last byte; slower ones get 408.
            Uploads need at least max_upload_mb / body_timeout MB/s to always get through.
        max_connections: open connections at most; past it, a new connection closes the one idle the longest, or
            is answered 503 (Retry-After: 1) when all are busy with requests.
        token: requests to /model, /predict and /explain must send "Authorization: Bearer TOKEN" (the page asks
            for it once); default: the TLBENCH_TOKEN environment variable, which keeps it out of the process list.
            Required when HOST is not a loopback address.
        open: serve a non-loopback HOST without a token, to anyone who can reach it.
        allowed_hosts: comma-separated names clients may use in the Host header besides localhost, 127.0.0.1,
            ::1 and HOST ("*": any); others get 400, which stops DNS-rebinding pages from reading the server.
    """
    missing = [name for name in ("fastapi", "uvicorn", "python_multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise TLBenchError(f"serve needs {', '.join(missing)}; install them with: pip install 'tlbench[serve]'")
    check_ranges(
        ("max_upload_mb", max_upload_mb, 0, False),
        ("max_decode_mb", max_decode_mb, 0, False),
        ("max_concurrency", max_concurrency, 1, True),
        ("decode_workers", decode_workers, 0, True),
        ("queue_timeout", queue_timeout, 0, True),
        ("top_k", top_k, 1, True),
        ("max_batch", max_batch, 1, True),
        ("batch_window_ms", batch_window_ms, 0, True),
        ("header_timeout", header_timeout, 0, False),
        ("body_timeout", body_timeout, 0, False),
        ("max_connections", max_connections, 1, True),
    )
    from tlbench.serve.access import LOOPBACK_HOSTS, is_loopback

    token = token or os.environ.get(TOKEN_VARIABLE) or None
    if not (token or open or is_loopback(host)):
        raise TLBenchError(
            f"--host {host} opens the server to the network: give it a token (--token, or {TOKEN_VARIABLE} in the"
            " environment) or run it open to anyone on purpose with --open true"
        )
    hosts = (*LOOPBACK_HOSTS, host, *(name.strip() for name in allowed_hosts.split(",") if name.strip()))
    import uvicorn

    from tlbench.models.loading import load_trained
    from tlbench.serve.app import ServeSettings, create_app
    from tlbench.serve.connections import reserve_file_handles, uvicorn_config

    reserve_file_handles(max_connections)
    return_freed_memory()
    trained = load_trained(model, phase)
    settings = ServeSettings(
        max_upload_mb=max_upload_mb,
        max_decode_mb=max_decode_mb,
        max_concurrency=max_concurrency,
        decode_workers=decode_workers or None,
        queue_timeout=queue_timeout,
        top_k=top_k,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        engine=engine,
        body_timeout=body_timeout,
        token=token,
        allowed_hosts=tuple(dict.fromkeys(hosts)),
    )
    app = create_app(trained, settings)
    print(
        f"serving {trained.backbone} ({trained.phase}, {len(trained.classes)} classes) from {trained.source}"
        f" at http://{host}:{port}/ - Ctrl+C stops",
        flush=True,
    )
    uvicorn.Server(uvicorn_config(app, host, port, header_timeout, max_connections)).run()
