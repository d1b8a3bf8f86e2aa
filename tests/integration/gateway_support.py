"""A gateway served on loopback over the session's containerd, for the control-plane tests.

The ``served`` and ``gw`` fixtures reach every integration test through
``tests/integration/conftest.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import Client, open_client
from actors.containerd._embedded import PrivateContainerd
from actors.control._policy import SpecPolicy
from actors.control.gateway import Gateway, GatewayConfig
from actors.control.gateway_client import GatewayClient, connect_gateway

from ..conftest import NAMESPACE


@dataclass
class Served:
    client: Client
    gateway: Gateway
    url: str
    token: str

    async def ids(self) -> set[str]:
        """What containerd itself lists (an RPC, not our state)."""
        return {c.id for c in await self.client._remote.containers_list()}


@asynccontextmanager
async def serve(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path, **config: Any
) -> AsyncIterator[Served]:
    token = secrets.token_urlsafe(32)
    bind_root = tmp_path / "binds"
    bind_root.mkdir(exist_ok=True)
    policy = SpecPolicy(
        default_rootfs=str(rootfs),
        allowed_rootfs_roots=(str(rootfs),),
        allowed_bind_roots=(str(bind_root),),
    )
    async with (
        open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as client,
        trio.open_nursery() as nursery,
    ):
        gateway = Gateway(client, GatewayConfig(token=token, policy=policy, port=0, **config))
        await nursery.start(gateway.serve)
        yield Served(client, gateway, f"ws://127.0.0.1:{gateway.port}", token)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def served(
    containerd: PrivateContainerd, io_dir: Path, rootfs: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    async with serve(containerd, io_dir, rootfs, tmp_path) as s:
        yield s


@pytest.fixture
async def gw(served: Served) -> AsyncIterator[GatewayClient]:
    async with connect_gateway(served.url, served.token) as client:
        yield client
