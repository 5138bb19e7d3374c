"""A test kit for code that uses p2p-copy: a real relay on loopback, started in-process.

    async with running_relay() as relay:
        await asyncio.gather(send(relay.url, "c", [path]), receive(relay.url, "c", out))

The relay is the production one, bound to a free port of 127.0.0.1, with timeouts short
enough that a test waiting for a peer that never comes fails in seconds, not minutes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .relay.server import Relay, RelayConfig

__all__ = ["TEST_CONFIG", "running_relay"]

#: Relay limits for tests: quick to give up, otherwise as in production.
TEST_CONFIG = RelayConfig(hello_timeout=5.0, peer_timeout=20.0)


@asynccontextmanager
async def running_relay(**config: Any) -> AsyncIterator[Relay]:
    """A relay on 127.0.0.1 and a free port; ``config`` overrides fields of TEST_CONFIG."""
    relay = Relay("127.0.0.1", 0, config=dataclasses.replace(TEST_CONFIG, **config))
    async with relay:
        yield relay
