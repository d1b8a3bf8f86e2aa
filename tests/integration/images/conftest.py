"""Fixtures for the image tests: the registries (see tests/registry_fixture.py) and a client
on a namespace of its own."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors import Client, open_client
from actors.containerd._embedded import PrivateContainerd
from tests.registry_fixture import auth_registry, registry

from ...conftest import unique_id

__all__ = ["auth_registry", "ns_client", "registry"]


@pytest.fixture
async def ns_client(containerd: PrivateContainerd, io_dir: Path) -> AsyncIterator[Client]:
    """A client on a fresh namespace: each test's images, content and snapshots apart."""
    async with open_client(
        containerd.address, unique_id("img").replace("_", "-"), state_dir=str(io_dir)
    ) as client:
        yield client
