"""Helpers shared by the integration and fault tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from actors import Client, EventInfo, EventType, Spec, Task, build_spec
from actors.containerd._embedded import PrivateContainerd
from actors.core._groups import collapse


class Recorder:
    """A Backend that keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, EventType, EventInfo]] = []

    async def process_event(
        self, container_id: str, event_type: EventType, info: EventInfo
    ) -> None:
        self.events.append((container_id, event_type, info))

    def exits(self, container_id: str, process_id: str | None = None) -> list[int]:
        pid_filter = process_id or container_id
        return [
            i.exit_code
            for c, t, i in self.events
            if c == container_id and t is EventType.EXIT and i.process_id == pid_filter
        ]

    def of(self, container_id: str) -> list[tuple[EventType, EventInfo]]:
        return [(t, i) for c, t, i in self.events if c == container_id]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        await self.wait_until(predicate, timeout)

    async def wait_until(self, predicate: object, timeout: float = 30) -> None:
        assert callable(predicate)
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.02)


def trap_spec(rootfs: Path, code: int) -> Spec:
    # PID 1 has no default signal actions; this one exits with `code` on SIGTERM.
    script = f'trap "exit {code}" TERM; echo ready; while :; do sleep 0.05; done'
    return build_spec(rootfs, ["sh", "-c", script])


async def wait_ready(task: Task) -> None:
    """Until the trap is installed: before that, PID 1 ignores SIGTERM."""
    assert task.io is not None
    assert task.io.stdout is not None
    with trio.fail_after(20):
        assert b"ready" in await task.io.stdout.receive_some()


async def start_many(client: Client, specs: Sequence[tuple[str, Spec]]) -> dict[str, Task]:
    tasks: dict[str, Task] = {}

    async def one(container_id: str, spec: Spec) -> None:
        container = await client.new_container(container_id, spec)
        tasks[container_id] = await container.start()

    async with trio.open_nursery() as nursery:
        for container_id, spec in specs:
            nursery.start_soon(one, container_id, spec)
    return tasks


async def wait_gone(pid: int, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
            await trio.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def leftovers(daemon: PrivateContainerd, namespace: str, io_dir: Path) -> list[str]:
    """What was left behind in a namespace: containers, tasks, FIFO files."""
    found = []
    for kind in ("containers", "tasks"):
        out = subprocess.run(
            ["ctr", "-a", daemon.address, "-n", namespace, kind, "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if out:
            found.append(f"{kind}: {out}")
    fifos = [str(p) for p in io_dir.rglob("*") if p.is_fifo()] if io_dir.exists() else []
    if fifos:
        found.append(f"fifos: {fifos}")
    return found


@asynccontextmanager
async def raw_websocket(
    port: int,
    resource: str,
    *,
    token: str | None,
    subprotocols: list[str],
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = 1,
) -> AsyncIterator[WebSocketConnection]:
    """A raw loopback websocket client whose TCP stream we close ourselves.

    trio-websocket's own client leaves its stream open when the server rejects the
    handshake or closes first.
    """
    headers = list(extra_headers or [])
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with stream, trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                "127.0.0.1",
                resource,
                subprotocols=subprotocols,
                extra_headers=headers,
                message_queue_size=message_queue_size,
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(2, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise collapse(group) from None
