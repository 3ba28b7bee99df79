"""Connection-level limits uvicorn lacks: a deadline for each request head and a cap on open connections.

uvicorn's h11 protocol closes a keep-alive connection after ``timeout_keep_alive`` only once a response has been
sent, and its keep-alive timer restarts on every byte: a connection that never completes its request head (no
bytes, or one byte every few seconds) stays open for ever, and enough of them use up the process's file handles,
after which nothing, ``/health`` included, is accepted. Its ``limit_concurrency`` answers 503 to every request
once that many connections are open, so idle connections alone would still shut everyone out.

``GuardedH11Protocol`` closes a connection whose request head has not fully arrived ``header_timeout`` seconds
after it opened (or after its previous response), however it trickles, and keeps at most ``max_connections``
open: a new connection past the cap closes the connection idle the longest (no request in progress), first among
those that never sent a request, so a flood of idle connections evicts itself before any client's keep-alive
connection; when every connection is busy with a request, the new one is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import resource

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tlbench.errors import TLBenchError

# File handles the server needs besides its connections: the model, libraries, the listening socket, threads.
SPARE_FILES = 128

REFUSED = json.dumps({"error": "server busy: too many open connections; retry in a moment"}).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(REFUSED)).encode() + b"\r\n\r\n" + REFUSED
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a connection cap (see the module docstring).

    Use ``configured`` to get a subclass with its own limits and its own register of idle connections.
    """

    header_timeout: float = 10.0
    max_connections: int = 1000
    # Connections waiting for a request head, oldest first (dicts keep insertion order): the eviction order, those
    # that never sent a request (``fresh``) before kept-alive ones.
    fresh: dict[GuardedH11Protocol, None] = {}
    kept: dict[GuardedH11Protocol, None] = {}

    @classmethod
    def configured(cls, header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
        """A subclass for one server: uvicorn instantiates the protocol class once per connection."""
        limits = {"header_timeout": header_timeout, "max_connections": max_connections, "fresh": {}, "kept": {}}
        return type(cls.__name__, (cls,), limits)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_deadline: asyncio.TimerHandle | None = None
        self.served = False
        self._await_head()
        if len(self.connections) > self.max_connections:
            oldest = next(iter(self.fresh or self.kept))
            if oldest is not self:
                oldest._close()
            else:  # every other connection has a request in progress
                self._close(BUSY_RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head was parsed: the request runs, no deadline for its head
            self._head_arrived()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self.served = True
            self._await_head()  # before the parent starts a pipelined request, which marks its head arrived
        super().on_response_complete()

    def _await_head(self) -> None:
        self._head_arrived()
        (self.kept if self.served else self.fresh)[self] = None
        self.head_deadline = self.loop.call_later(self.header_timeout, self._close)

    def _head_arrived(self) -> None:
        self.fresh.pop(self, None)
        self.kept.pop(self, None)
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _close(self, answer: bytes = b"") -> None:
        self._head_arrived()
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()


def reserve_file_handles(max_connections: int) -> int:
    """Raise this process's open-file limit to its hard limit and check ``max_connections`` fits under it, so the
    cap, not the operating system, decides when connections are refused (running out of handles makes every
    accept fail, and the log fill with accept errors). Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if max_connections + SPARE_FILES > soft:
        raise TLBenchError(
            f"--max_connections {max_connections} needs {max_connections + SPARE_FILES} open files but this process"
            f" may open {soft}; lower --max_connections or raise the limit (ulimit -n)"
        )
    return soft


def uvicorn_config(app, host: str, port: int, header_timeout: float, max_connections: int) -> uvicorn.Config:
    """uvicorn settings for a server facing strangers: the guarded h11 protocol, no WebSocket support, keep-alive
    connections closed after 5 idle seconds, request heads over 16 KiB refused."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=GuardedH11Protocol.configured(header_timeout, max_connections),
        ws="none",
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
        log_level="warning",
        access_log=False,
    )
