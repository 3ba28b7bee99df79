"""The FastAPI application: a one-page UI, ``POST /predict``, ``POST /explain``, ``GET /model`` and ``GET /health``.

Safety, in the order a request meets it:

- ``AccessControl`` (``access.py``) refuses a ``Host`` outside ``allowed_hosts`` (400) and, when a ``token`` is
  set, requests to ``/model``, ``/predict`` and ``/explain`` without ``Authorization: Bearer TOKEN`` (401).
0. ``GuardedH11Protocol`` (``connections.py``, set up by ``uvicorn_config``) drops connections whose request
   head takes over ``header_timeout`` seconds and keeps at most ``max_connections`` open.
1. ``BodyLimits`` refuses bodies over ``max_upload_mb`` with 413 (from the Content-Length before a byte is read,
   or while they stream in) and bodies not received within ``body_timeout`` seconds with 408.
2. ``ConcurrencyLimit`` admits ``max_concurrency`` requests to reading, decoding and inference, the slot taken
   before the body is read; others wait up to ``queue_timeout`` seconds, then get 429 with ``Retry-After``.
3. The multipart body is parsed in memory on a worker thread (python-multipart, spooling to disk disabled), at
   most ``MAX_PARTS`` parts; the client's file name is never looked at, and nothing is written to disk.
4. ``load_rgb`` decides the format from the bytes: anything that is not a supported raster image (SVG, HTML,
   text, PDF...) is 415; damaged files, decompression bombs and images too small are 422 with its reason.
   It decodes within a ``DecodeBudget`` of ``max_decode_mb`` of pixel memory, keeping twice the model's resize
   size (JPEGs decoded at reduced scale, others box-reduced right after decoding): an image that would need more,
   such as a 200 KB PNG of 9400x9400 16-bit pixels, is 413 from its header. At most ``decode_workers`` uploads
   (default: one per usable core) decode at once, the others waiting their turn inside their slot: decoding is
   CPU-bound, so more at once would not finish sooner, and the pixel memory of a burst stays within
   ``decode_workers * max_decode_mb`` however many slots there are.

``POST /explain`` goes through the same steps (slot, body, decoding among the ``decode_workers``) and returns
the Grad-CAM overlay of the predicted class (``explaining.py``); without Captum it is 501 with the pip command,
before the body is read.

Every error is ``{"error": "..."}`` JSON with the right status; unexpected failures are a JSON 500, never a
traceback; a client that goes away during its upload is one warning line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from python_multipart import create_form_parser
from python_multipart.exceptions import FormParserError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from tlbench.data.images import DecodeBudget, ImageLoadError, ImageTooLargeError, NotAnImageError, load_rgb
from tlbench.machine import usable_cores
from tlbench.models.engine_name import EngineName
from tlbench.models.inference import Predictor
from tlbench.models.loading import TrainedModel
from tlbench.serve.access import AccessControl
from tlbench.serve.batching import MicroBatcher
from tlbench.serve.explaining import ExplanationUnavailable, UploadExplainer
from tlbench.serve.limits import BodyLimits, Busy, ConcurrencyLimit

UPLOAD_FIELD = "file"
# The page sends one part; a body of 300,000 tiny fields would otherwise take seconds of parsing.
MAX_PARTS = 16
# The page's script and styles are inline and it fetches only this server: nothing else may run or load.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob:; connect-src 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
}


log = logging.getLogger("uvicorn.error")  # uvicorn's own handler: one line each, where its messages go


@dataclass(frozen=True)
class ServeSettings:
    max_upload_mb: float = 20
    max_decode_mb: float = 48
    max_concurrency: int = 8
    decode_workers: int | None = None  # None: one per usable core
    queue_timeout: float = 1.0
    top_k: int = 5
    max_batch: int = 8
    batch_window_ms: float = 5.0
    engine: EngineName = "auto"
    body_timeout: float = 15.0
    # None: no token needed / any Host (in-process use); ``tlbench serve`` always sets the Host list.
    token: str | None = None
    allowed_hosts: tuple[str, ...] | None = None


def model_info(trained: TrainedModel) -> dict:
    """What a client needs to interpret predictions; the source is named, not its path on the server."""
    return {
        "backbone": trained.backbone,
        "phase": trained.phase,
        "classes": trained.classes,
        "preprocessing": trained.preprocessing.to_dict(),
        "source": trained.source.name,
    }


class TooManyParts(Exception):
    pass


def read_upload(body: bytes, content_type: str) -> bytes:
    """The bytes of the ``file`` field of a multipart body, parsed in memory (never spooled to disk); 400 past
    ``MAX_PARTS`` parts, stopping the parse there."""
    fields: dict[bytes, bytes] = {}
    parts = 0

    def keep(name: bytes, value: bytes) -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise TooManyParts
        fields[name] = value

    def on_file(upload) -> None:
        upload.file_object.seek(0)
        keep(upload.field_name, upload.file_object.read())

    try:
        parser = create_form_parser(
            {"Content-Type": content_type},
            lambda field: keep(field.field_name, field.value or b""),
            on_file,
            config={"MAX_MEMORY_FILE_SIZE": len(body) + 1},
        )
        parser.write(body)
        parser.finalize()
    except TooManyParts:
        raise HTTPException(
            400, f"more than {MAX_PARTS} parts in the form; send only the field '{UPLOAD_FIELD}'"
        ) from None
    except (FormParserError, ValueError):
        raise HTTPException(400, f"send the image as multipart/form-data in the field '{UPLOAD_FIELD}'") from None
    if UPLOAD_FIELD.encode() not in fields:
        raise HTTPException(
            400, f"no '{UPLOAD_FIELD}' field in the form; send the image as multipart/form-data field '{UPLOAD_FIELD}'"
        )
    return fields[UPLOAD_FIELD.encode()]


def decode(data: bytes, predictor: Predictor, budget: DecodeBudget):
    """Decoded and preprocessed network input of an upload (see ``open_upload``)."""
    return predictor.transform(open_upload(data, budget))


def open_upload(data: bytes, budget: DecodeBudget) -> Image.Image:
    """An upload decoded to an RGB image within ``budget``; 415 for non-images, 413 for images over the decoding
    budget, 422 for unusable images."""
    try:
        return load_rgb(data, budget=budget)
    except ImageTooLargeError as error:
        raise HTTPException(413, f"image {error}") from None
    except NotAnImageError as error:
        raise HTTPException(415, f"not a supported image: {error} (send JPEG, PNG, WebP, BMP, GIF or TIFF)") from None
    except ImageLoadError as error:
        raise HTTPException(422, f"unusable image: {error}") from None


def create_app(trained: TrainedModel, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The server for ``trained``; access control, then the body limits, wrap everything else."""
    predictor = Predictor(trained, engine=settings.engine)
    batcher = MicroBatcher(predictor.forward, settings.max_batch, settings.batch_window_ms)
    limit = ConcurrencyLimit(settings.max_concurrency, settings.queue_timeout)
    info = model_info(trained)
    budget = DecodeBudget(2 * trained.preprocessing.resize_size, int(settings.max_decode_mb * 2**20))
    decoding = asyncio.Semaphore(settings.decode_workers or usable_cores())
    page = files("tlbench.serve").joinpath("page.html").read_text()
    explainer = UploadExplainer(trained)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tlbench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Busy)
    async def busy(request: Request, error: Busy) -> JSONResponse:
        message = f"server busy: {limit.slots} images in progress; retry in a moment"
        # Closing spares draining a body that was never read (the slot is taken before it).
        return JSONResponse({"error": message}, status_code=429, headers={"Retry-After": "1", "Connection": "close"})

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, error: ClientDisconnect) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "client"
        log.warning('%s - "%s %s" client disconnected during the upload', client, request.method, request.url.path)
        return Response(status_code=499)  # nobody reads it; ends the request without a traceback

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal server error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        return {**info, "explain": explainer.available}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        started = time.perf_counter()
        async with limit.slot():
            body = await request.body()
            upload = await run_in_threadpool(read_upload, body, request.headers.get("content-type", ""))
            with batcher.on_its_way() as submit:
                async with decoding:
                    tensor = await run_in_threadpool(decode, upload, predictor, budget)
                probabilities = await submit(tensor)
        predictions = predictor.label_top_k(probabilities[None], settings.top_k)[0]
        return {
            "predictions": [{"label": label, "prob": prob} for label, prob in predictions],
            "model": {"backbone": info["backbone"], "phase": info["phase"], "source": info["source"]},
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    @app.post("/explain")
    async def explain(request: Request) -> dict:
        if not explainer.available:  # before the body is read: closing spares draining it
            raise HTTPException(501, explainer.unavailable, headers={"Connection": "close"})
        started = time.perf_counter()
        async with limit.slot():
            body = await request.body()
            upload = await run_in_threadpool(read_upload, body, request.headers.get("content-type", ""))
            async with decoding:
                image = await run_in_threadpool(open_upload, upload, budget)
            try:
                answer = await run_in_threadpool(explainer.explain, image)
            except ExplanationUnavailable as error:  # found out on the first request (a vision transformer)
                raise HTTPException(501, str(error)) from None
        return {**answer, "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)}

    app.add_middleware(BodyLimits, max_bytes=int(settings.max_upload_mb * 2**20), timeout_s=settings.body_timeout)
    app.add_middleware(AccessControl, token=settings.token, allowed_hosts=settings.allowed_hosts)
    return app
