"""The grpclib channel's write coalescing (actors.containerd._channel)."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.containerd._channel import ContainerdChannel, Encoded, _CoalescingTransport
from actors.images._pb import content_pb2


class Recorder:
    """The asyncio transport's surface that the proxy uses, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": "peer"}.get(name, default)


def test_writes_of_one_loop_iteration_go_out_as_one_in_order() -> None:
    async def main() -> None:
        recorder = Recorder()
        proxy = _CoalescingTransport(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
        for piece in (b"a", b"", b"bc", b"d"):
            proxy.write(piece)
        assert recorder.writes == []  # nothing before the loop's next turn
        await asyncio.sleep(0)
        assert recorder.writes == [b"abcd"]
        proxy.write(b"e")
        await asyncio.sleep(0)
        assert recorder.writes == [b"abcd", b"e"]
        # Closing sends what is queued first; the flush scheduled before finds nothing.
        proxy.write(b"f")
        proxy.close()
        assert recorder.writes == [b"abcd", b"e", b"f"] and recorder.closed
        await asyncio.sleep(0)
        assert len(recorder.writes) == 3
        # A write after the transport closed is dropped, as asyncio's own would be.
        proxy.write(b"late")
        await asyncio.sleep(0)
        assert len(recorder.writes) == 3
        # Everything else is the wrapped transport's.
        assert proxy.get_extra_info("peername") == "peer"

    asyncio.run(main())


def test_the_channel_builds_coalescing_protocols() -> None:
    async def main() -> None:
        channel = ContainerdChannel(path="/nonexistent.sock")
        try:
            protocol = channel._protocol_factory()
            recorder = Recorder()
            protocol.connection_made(recorder)  # type: ignore[arg-type]
            # The HTTP/2 preface and SETTINGS are queued, then sent together.
            assert recorder.writes == []
            await asyncio.sleep(0)
            assert len(recorder.writes) == 1
            assert recorder.writes[0].startswith(b"PRI * HTTP/2.0")
        finally:
            channel.close()

    asyncio.run(main())


def test_the_codec_passes_encoded_messages_through() -> None:
    async def main() -> None:
        channel = ContainerdChannel(path="/nonexistent.sock")
        try:
            codec = channel._codec
            kind = content_pb2.WriteContentRequest
            assert codec.encode(Encoded(b"\x08\x01"), kind) == b"\x08\x01"
            message = kind(action=content_pb2.STAT, ref="r")
            assert codec.encode(message, kind) == message.SerializeToString()
        finally:
            channel.close()

    asyncio.run(main())
