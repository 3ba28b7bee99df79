"""Limits that keep one client from exhausting the server: request body size and concurrent inferences."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413 before they are buffered.

    A declared ``Content-Length`` over the limit is refused before a byte of the body is read. Without one
    (chunked uploads), the bytes of each ``http.request`` message are counted as the application reads them and
    the read fails with 413 as soon as the count passes the limit, so at most one chunk beyond it is held.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> str:
        return f"request body over the {self.max_bytes / 2**20:g} MiB limit"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await JSONResponse({"error": "invalid Content-Length header"}, status_code=400)(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await JSONResponse({"error": self.too_large()}, status_code=413, headers={"Connection": "close"})(
                    scope, receive, send
                )
                return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self.too_large(), headers={"Connection": "close"})
            return message

        await self.app(scope, counted_receive, send)


class Busy(Exception):
    """Every inference slot stayed taken for the whole wait."""


class ConcurrencyLimit:
    """At most ``slots`` requests decode and infer at once; a request waits up to ``wait_s`` for a slot.

    Bounding the work in flight bounds memory (each holds a decoded image) and keeps latency predictable under
    a burst: rather than queueing without end, a request that cannot start within ``wait_s`` gets 429 at once
    and the client can retry.
    """

    def __init__(self, slots: int, wait_s: float) -> None:
        if slots < 1:
            raise ValueError("at least one inference slot is needed")
        self.slots = slots
        self.wait_s = wait_s
        self._semaphore = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        # wait_for(..., 0) would time out even on a free semaphore, so take a free slot without it.
        if self._semaphore.locked():
            try:
                await asyncio.wait_for(self._semaphore.acquire(), self.wait_s)
            except asyncio.TimeoutError:
                raise Busy from None
        else:
            await self._semaphore.acquire()
        try:
            yield
        finally:
            self._semaphore.release()
