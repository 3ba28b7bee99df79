"""Who may talk to the server: a Host-header allow-list and a bearer token.

The Host check stops DNS rebinding: a web page on any site can point its own domain name at 127.0.0.1 and, once
the browser treats the server as that site's origin, read ``/model`` and predictions from a server on the same
machine. Its requests carry the attacker's domain in ``Host``, which is not on the list (loopback names, the
bound address, and what ``--allowed_hosts`` adds).

The token guards ``/model``, ``/predict`` and ``/explain`` on a network: every request there must carry
``Authorization: Bearer TOKEN``. The page (``/``) and ``/health`` stay open, so a browser can load the page that
asks for the token and a load balancer can probe the server; neither reveals anything about the model.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tlbench.serve.limits import CLOSE

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = frozenset({"/", "/health"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8000`` -> ``::1``, ``Example.org:80`` ->
    ``example.org``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class AccessControl:
    """ASGI middleware: 400 for a ``Host`` not in ``allowed_hosts`` (``None``: no check; ``"*"`` in it: any), then
    401 for a request outside ``OPEN_PATHS`` without the bearer ``token`` (``None``: no token needed). Both are
    answered from the headers alone, before any body is read, and close the connection (so an unread upload is
    not drained)."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.allowed = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.allowed is not None:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                message = f"Host '{host}' is not served here; start the server with --allowed_hosts {host or 'NAME'}"
                await JSONResponse({"error": message}, status_code=400, headers=CLOSE)(scope, receive, send)
                return
        if self.expected is not None and scope["path"] not in OPEN_PATHS:
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                await JSONResponse(
                    {"error": "missing or wrong token: send the header Authorization: Bearer TOKEN"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer", **CLOSE},
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)
