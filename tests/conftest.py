"""Test harness: a private containerd per session and a busybox rootfs.

Integration tests ask for the ``containerd`` fixture (or ``client``). The session starts its
own containerd (temporary root, state and socket; CRI disabled). Without containerd, runc or
busybox the integration tests are skipped locally, but with ``CI=true`` that is a failure.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from actors import Client, open_client
from actors.containerd._embedded import PrivateContainerd, build_busybox_rootfs, missing_host_tools

from .helpers import leftovers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

NAMESPACE = "ca-test"
_ids = itertools.count()
# Every async test runs under a deadline, so a regression that makes something wait forever
# fails with a name instead of hanging the suite (tests still put their own, tighter
# trio.fail_after around each wait). Trio time: under a MockClock it jumps like the rest.
TEST_DEADLINE = 300.0
SLOW_TEST_DEADLINE = 1800.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "obj", None)
        if not inspect.iscoroutinefunction(function) or hasattr(function, "hypothesis"):
            continue
        limit = SLOW_TEST_DEADLINE if item.get_closest_marker("slow") else TEST_DEADLINE
        item.obj = _with_deadline(function, limit, item.nodeid)  # type: ignore[attr-defined]


def _with_deadline(
    function: Callable[..., Awaitable[object]], limit: float, name: str
) -> Callable[..., Awaitable[object]]:
    @functools.wraps(function)
    async def bounded(*args: object, **kwargs: object) -> object:
        with trio.move_on_after(limit) as scope:
            return await function(*args, **kwargs)
        assert scope.cancelled_caught
        raise TimeoutError(f"{name} ran past its {limit:.0f} s deadline")

    return bounded


def unique_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def _require_host() -> None:
    problems = list(missing_host_tools())
    if os.geteuid() != 0:
        problems.append("root privileges")
    if not problems:
        return
    message = "integration tests need " + ", ".join(problems) + " (run `make test` as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    # Short paths: unix socket paths are limited to 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="ca-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd(session_dir: Path) -> Iterator[PrivateContainerd]:
    _require_host()
    daemon = PrivateContainerd(session_dir / "containerd")
    daemon.start()
    yield daemon
    left = leftovers(daemon, NAMESPACE, session_dir / "io")
    daemon.close()
    if left:
        pytest.fail("the suite leaked: " + "; ".join(left), pytrace=False)


@pytest.fixture(scope="session")
def rootfs(session_dir: Path) -> Path:
    _require_host()
    return build_busybox_rootfs(session_dir / "rootfs")


@pytest.fixture
def io_dir(session_dir: Path) -> Path:
    return session_dir / "io"


@pytest.fixture
async def client(containerd: PrivateContainerd, io_dir: Path) -> AsyncIterator[Client]:
    async with open_client(containerd.address, NAMESPACE, state_dir=str(io_dir)) as c:
        yield c


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateContainerd]:
    """A containerd of the test's own, for tests that kill, freeze or restart it."""
    _require_host()
    instance = PrivateContainerd(Path(tmp_path_factory.mktemp("cd", numbered=True)) / "c")
    instance.start()
    yield instance
    instance.close()


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "io")
