"""Limits that keep one client from exhausting the server: request body size and time, concurrent inferences."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = {"Connection": "close"}


class BodyLimits:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413 before they are buffered, and bodies
    not fully received ``timeout_s`` seconds after the request head with 408.

    A declared ``Content-Length`` over the limit is refused before a byte of the body is read. Without one
    (chunked uploads), the bytes of each ``http.request`` message are counted as the application reads them and
    the read fails with 413 as soon as the count passes the limit, so at most one chunk beyond it is held. The
    deadline covers the whole body, so a client trickling a byte now and then cannot hold its inference slot
    (taken before the body is read) for longer than ``timeout_s``. Both answers close the connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

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
                await JSONResponse({"error": self.too_large()}, status_code=413, headers=CLOSE)(scope, receive, send)
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body the application may wait for a disconnect: no deadline for that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise HTTPException(
                    408, f"request body not received within {self.timeout_s:g} s", headers=CLOSE
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self.too_large(), headers=CLOSE)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class Busy(Exception):
    """Every inference slot stayed taken for the whole wait."""


class ConcurrencyLimit:
    """At most ``slots`` requests receive, decode and infer at once; a request waits up to ``wait_s`` for a slot.

    Bounding the work in flight bounds memory (each holds an upload, then a decoded image; the slot is taken
    before the body is read, so stalled uploads cannot pile up in memory) and keeps latency predictable under
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
