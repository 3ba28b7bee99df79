"""``python -m tlbench serve MODEL``: a web page and JSON API classifying uploaded images with a trained model."""

from __future__ import annotations

import importlib.util

from tlbench.errors import TLBenchError
from tlbench.models.engine import EngineName
from tlbench.models.loading import load_trained


def serve(
    model: str,
    phase: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 20,
    max_concurrency: int = 8,
    queue_timeout: float = 1.0,
    top_k: int = 5,
    max_batch: int = 8,
    batch_window_ms: float = 5.0,
    engine: EngineName = "auto",
) -> None:
    """Serve MODEL at http://HOST:PORT/ (page), POST /predict (multipart field "file"), GET /model, GET /health.

    Args:
        model: a bundle (tlbench export), a run directory or a .ckpt file.
        phase: head or finetune for a run directory (default: the final model, metrics.json "final").
        host: interface to listen on; 127.0.0.1 keeps it on this machine, 0.0.0.0 opens it to the network.
        port: TCP port.
        max_upload_mb: largest request body accepted; larger uploads get 413 while streaming.
        max_concurrency: images decoded and classified at once; more wait (see queue_timeout).
        queue_timeout: seconds a request waits for a free slot before it gets 429 (Retry-After: 1).
        top_k: predictions returned per image.
        max_batch: most concurrent requests sharing one forward pass; 1 turns micro-batching off.
        batch_window_ms: how long the first queued request waits for others to join its batch.
        engine: auto (ONNX Runtime on a CPU, torch on a GPU), torch or onnxruntime; a bundle's model.onnx is used
            when present, else the model is exported on the first request (and cached).
    """
    missing = [name for name in ("fastapi", "uvicorn", "python_multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise TLBenchError(f"serve needs {', '.join(missing)}; install them with: pip install 'tlbench[serve]'")
    if min(max_concurrency, max_batch, top_k) < 1 or max_upload_mb <= 0 or queue_timeout < 0 or batch_window_ms < 0:
        raise TLBenchError(
            "max_concurrency, max_batch and top_k must be >= 1, max_upload_mb > 0,"
            " queue_timeout and batch_window_ms >= 0"
        )
    import uvicorn

    from tlbench.serve.app import ServeSettings, create_app

    trained = load_trained(model, phase)
    app = create_app(
        trained, ServeSettings(max_upload_mb, max_concurrency, queue_timeout, top_k, max_batch, batch_window_ms, engine)
    )
    print(
        f"serving {trained.backbone} ({trained.phase}, {len(trained.classes)} classes) from {trained.source}"
        f" at http://{host}:{port}/ - Ctrl+C stops",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
