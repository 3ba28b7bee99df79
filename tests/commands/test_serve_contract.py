"""Contract test around the uvicorn internals ``GuardedH11Protocol`` (tlbench/serve/connections.py) builds on.

uvicorn has no public hook for a request-head deadline or an eviction policy, so the guarded protocol subclasses
``H11Protocol`` and overrides four of its methods, reading four of its attributes. This test names exactly those,
so a uvicorn upgrade that renames one fails here, with the name, instead of as a hung or refused connection in
the server tests.
"""

import asyncio
import inspect

from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from tlbench.serve.connections import GuardedH11Protocol, uvicorn_config

OVERRIDDEN = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "handle_events": ["self"],
    "on_response_complete": ["self"],
}


def test_the_h11_protocol_methods_the_guard_overrides_keep_their_signatures():
    for name, parameters in OVERRIDDEN.items():
        assert name in vars(H11Protocol), f"uvicorn's H11Protocol no longer defines {name}"
        assert list(inspect.signature(getattr(H11Protocol, name)).parameters) == parameters, name


def test_a_new_protocol_has_the_attributes_the_guard_reads():
    config = uvicorn_config(FastAPI(), "127.0.0.1", 8000, header_timeout=1.0, max_connections=2)
    state = ServerState()
    loop = asyncio.new_event_loop()
    try:
        protocol = config.http(config=config, server_state=state, app_state={}, _loop=loop)
    finally:
        loop.close()
    assert isinstance(protocol, GuardedH11Protocol) and isinstance(protocol, H11Protocol)
    assert protocol.connections is state.connections  # the set whose size the cap compares with
    assert protocol.loop is loop  # the timers of the head deadline
    assert protocol.cycle is None  # replaced when a request head has been parsed
    assert hasattr(protocol, "transport")
