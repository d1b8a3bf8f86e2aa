"""Streaming RPCs through the bridge (actors._streams) against an in-process grpclib server.

The server plays containerd's Content service just enough to drive every path of a lock-step
bidirectional stream and of a server stream: answers, error statuses before and after an
answer, a silent end, a server that never answers (cancellation), and extra headers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from actors.containerd._bridge import AsyncioBridge
from actors.containerd._remote import Remote
from actors.errors import AlreadyExists, FailedPrecondition, Internal, NotFound, OutOfRange
from actors.images._content import LEASE_HEADER, ContainerdImageServices
from actors.images._pb import content_grpc, content_pb2


class FakeContent(content_grpc.ContentBase):
    """Only Write and Read do something; ``mode`` picks the behaviour of the next Write."""

    def __init__(self) -> None:
        self.mode = "echo"
        self.metadata: list[dict[str, str]] = []
        self.received: list[content_pb2.WriteContentRequest] = []
        self.handler_cancelled = threading.Event()

    async def Write(self, stream: Stream[Any, Any]) -> None:
        assert stream.metadata is not None
        self.metadata.append({k: v for k, v in stream.metadata.items() if isinstance(v, str)})
        offset = 0
        last = None
        async for request in stream:
            self.received.append(request)
            if self.mode == "already":
                raise GRPCError(Status.ALREADY_EXISTS, "content sha256:x: already exists")
            if self.mode == "silent":
                return
            if self.mode == "hang":
                try:
                    await asyncio.Event().wait()
                finally:
                    self.handler_cancelled.set()
            if request.action == content_pb2.COMMIT and self.mode == "fail_commit":
                raise GRPCError(Status.FAILED_PRECONDITION, "unexpected commit digest")
            if request.data == b"bad" and self.mode == "fail_write":
                raise GRPCError(Status.OUT_OF_RANGE, "write @3 must occur at current offset 2")
            offset += len(request.data)
            last = content_pb2.WriteContentResponse(
                action=request.action, offset=offset, digest="sha256:" + "0" * 64
            )
            await stream.send_message(last)
            if request.action == content_pb2.COMMIT:
                break
        if last is not None:
            # containerd's deferred handler sends its last response again.
            await stream.send_message(last)

    async def Read(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        for i in range(3):
            await stream.send_message(content_pb2.ReadContentResponse(offset=i, data=b"abc"))
        if request.digest == "fail":
            raise GRPCError(Status.NOT_FOUND, "gone mid-read")

    async def Info(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

    Update = List = Delete = Status = ListStatuses = Abort = Info


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[FakeContent, Remote, AsyncioBridge]]:
    path = str(tmp_path / "content.sock")
    fake = FakeContent()
    bridge = await AsyncioBridge.start()

    async def serve() -> Server:
        server = Server([fake])
        await server.start(path=path)
        return server

    try:
        server = await bridge.run(serve)

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        bridge.add_shutdown_callback(stop)
        remote = await Remote.connect(bridge, path, "ns1")
        yield fake, remote, bridge
    finally:
        await bridge.aclose()


def _write(action: int, data: bytes = b"", ref: str = "") -> content_pb2.WriteContentRequest:
    return content_pb2.WriteContentRequest(action=action, data=data, ref=ref)  # type: ignore[arg-type]


async def test_lock_step_exchange_counts_one_rpc(
    served: tuple[FakeContent, Remote, AsyncioBridge],
) -> None:
    fake, remote, bridge = served
    services = ContainerdImageServices(remote)
    with trio.fail_after(10):
        async with services.content_write(lease="lease-1") as writer:
            stat = await writer.exchange(_write(content_pb2.STAT, ref="r"))
            assert stat.offset == 0
            written = await writer.exchange(_write(content_pb2.WRITE, b"12345"))
            assert written.offset == 5
            # The repeated last response is read and dropped; the call's status is OK.
            committed = await writer.exchange(_write(content_pb2.COMMIT, b"678"), end=True)
            assert committed.offset == 8
            assert writer.done
            with pytest.raises(RuntimeError, match="finished"):
                await writer.exchange(_write(content_pb2.STAT))
    assert [r.action for r in fake.received] == [
        content_pb2.STAT,
        content_pb2.WRITE,
        content_pb2.COMMIT,
    ]
    assert fake.metadata[0]["containerd-namespace"] == "ns1"
    assert fake.metadata[0][LEASE_HEADER] == "lease-1"
    stats = remote.statistics()
    assert stats.calls == {"Content.Write": 1}
    assert stats.failures == {}
    assert bridge.statistics().streams_open == 0
    assert bridge.statistics().tasks_in_flight == 0


@pytest.mark.parametrize(
    ("mode", "error", "match"),
    [
        ("fail_commit", FailedPrecondition, "unexpected commit digest"),
        ("already", AlreadyExists, "already exists"),
        ("silent", Internal, "without an answer"),
    ],
)
async def test_errors_are_ours_and_counted(
    served: tuple[FakeContent, Remote, AsyncioBridge],
    mode: str,
    error: type[Exception],
    match: str,
) -> None:
    fake, remote, bridge = served
    fake.mode = mode
    services = ContainerdImageServices(remote)
    with trio.fail_after(10):
        with pytest.raises(error, match=match):
            async with services.content_write() as writer:
                await writer.exchange(_write(content_pb2.COMMIT, b"x", ref="r"), end=True)
    assert remote.statistics().calls == {"Content.Write": 1}
    assert remote.statistics().failures == {"Content.Write": 1}
    assert LEASE_HEADER not in fake.metadata[0]
    assert bridge.statistics().tasks_in_flight == 0


async def test_error_after_answers_arrives_at_the_failing_exchange(
    served: tuple[FakeContent, Remote, AsyncioBridge],
) -> None:
    fake, remote, _ = served
    fake.mode = "fail_commit"
    services = ContainerdImageServices(remote)
    with trio.fail_after(10):
        async with services.content_write() as writer:
            assert (await writer.exchange(_write(content_pb2.WRITE, b"ab", ref="r"))).offset == 2
            with pytest.raises(FailedPrecondition):
                await writer.exchange(_write(content_pb2.COMMIT), end=True)
            assert writer.done


async def test_cancelled_exchange_resets_the_stream(
    served: tuple[FakeContent, Remote, AsyncioBridge],
) -> None:
    fake, remote, bridge = served
    fake.mode = "hang"
    services = ContainerdImageServices(remote)
    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            async with services.content_write() as writer:
                await writer.exchange(_write(content_pb2.STAT, ref="r"))
        assert scope.cancelled_caught
        assert writer.done
        # Leaving the block reset the stream: the server's handler was cancelled.
        while not fake.handler_cancelled.is_set():
            await trio.sleep(0.01)
    assert bridge.statistics().streams_open == 0
    assert bridge.statistics().tasks_in_flight == 0
    assert remote.statistics().failures == {}


async def test_server_stream_maps_errors(
    served: tuple[FakeContent, Remote, AsyncioBridge],
) -> None:
    _, remote, _ = served
    services = ContainerdImageServices(remote)
    with trio.fail_after(10):
        async with services.content_read("fine") as stream:
            assert [m.data async for m in stream] == [b"abc"] * 3
        got = []
        with pytest.raises(NotFound, match=r"Content\.Read: gone mid-read"):
            async with services.content_read("fail") as stream:
                async for message in stream:
                    got.append(message.data)
        assert got == [b"abc"] * 3
    assert remote.statistics().calls == {"Content.Read": 2}
    assert remote.statistics().failures == {"Content.Read": 1}


async def test_pipelined_sends_get_every_answer_in_order(
    served: tuple[FakeContent, Remote, AsyncioBridge],
) -> None:
    fake, remote, bridge = served
    services = ContainerdImageServices(remote)
    answers: list[content_pb2.WriteContentResponse] = []
    with trio.fail_after(10):
        async with services.content_write() as writer:
            assert (await writer.exchange(_write(content_pb2.STAT, ref="r"))).offset == 0
            for piece in (b"a", b"bc", b"def"):
                # Returns before the server answered: only answers that came in meanwhile.
                answers += await writer.send(_write(content_pb2.WRITE, piece))
                assert writer.unanswered + len(answers) == len(piece)
            with pytest.raises(RuntimeError, match="outstanding"):
                await writer.exchange(_write(content_pb2.STAT))
            # The end waits for every answer: the COMMIT's own comes last.
            answers += await writer.send(_write(content_pb2.COMMIT, b"g"), end=True)
            assert writer.done and writer.unanswered == 0
    assert [a.offset for a in answers] == [1, 3, 6, 7]
    assert [a.action for a in answers][-1] == content_pb2.COMMIT
    assert [r.data for r in fake.received] == [b"", b"a", b"bc", b"def", b"g"]
    assert remote.statistics().calls == {"Content.Write": 1}
    assert remote.statistics().failures == {}
    assert bridge.statistics().streams_open == 0
    assert bridge.statistics().tasks_in_flight == 0


async def test_a_failed_pipelined_write_surfaces_at_a_later_call(
    served: tuple[FakeContent, Remote, AsyncioBridge],
) -> None:
    fake, remote, bridge = served
    fake.mode = "fail_write"
    services = ContainerdImageServices(remote)
    with trio.fail_after(10):
        with pytest.raises(OutOfRange, match="must occur at current offset"):
            async with services.content_write() as writer:
                await writer.send(_write(content_pb2.WRITE, b"ok", ref="r"))
                await writer.send(_write(content_pb2.WRITE, b"bad"))
                # The server failed the stream; the error comes with the next call at the
                # latest (here the end, which waits for every answer).
                await writer.send(_write(content_pb2.COMMIT), end=True)
        assert writer.done
    assert remote.statistics().failures == {"Content.Write": 1}
    assert bridge.statistics().streams_open == 0
    assert bridge.statistics().tasks_in_flight == 0


async def test_close_ends_our_side_and_waits_for_the_server(
    served: tuple[FakeContent, Remote, AsyncioBridge],
) -> None:
    fake, remote, bridge = served
    services = ContainerdImageServices(remote)
    with trio.fail_after(10):
        async with services.content_write() as writer:
            assert await writer.close() == []  # nothing sent: nothing to close on the server
        async with services.content_write() as writer:
            got = await writer.send(_write(content_pb2.WRITE, b"abc", ref="r"))
            got += await writer.send(_write(content_pb2.WRITE, b"d"))
            # The server's answers to both, its repeat of the last one after our end dropped.
            got += await writer.close()
            assert [a.offset for a in got] == [3, 4] and writer.done
            with pytest.raises(RuntimeError, match="finished"):
                await writer.close()
    assert [r.data for r in fake.received] == [b"abc", b"d"]
    assert remote.statistics().calls == {"Content.Write": 2}
    assert remote.statistics().failures == {}
    assert bridge.statistics().streams_open == 0
    assert bridge.statistics().tasks_in_flight == 0
