"""Pure parts of the image store: sources, re-chunking, GC labels, validation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.errors import InvalidArgument
from actors.images._ingest import _recut, _write_request, open_source
from actors.images._pb import content_pb2
from actors.images._store import (
    Descriptor,
    config_gc_labels,
    index_gc_labels,
    manifest_gc_labels,
    validate_digest,
)

D = [f"sha256:{c * 64}" for c in "abcdef"]


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def collect(source: object, offset: int, size: int) -> list[bytes]:
    async with open_source(source, offset, size) as chunks:  # type: ignore[arg-type]
        return [chunk async for chunk in chunks]


async def test_iterable_source_skips_the_held_prefix_and_rechunks() -> None:
    source = pieces(b"abc", b"defg", b"h", b"ijklmnop")
    assert await collect(source, 5, 4) == [b"fghi", b"jklm", b"nop"]


async def test_iterable_source_from_zero() -> None:
    assert await collect(pieces(b"ab", b"", b"cdefg"), 0, 3) == [b"abc", b"def", b"g"]


async def test_callable_source_starts_at_the_offset() -> None:
    asked: list[int] = []

    def from_offset(offset: int) -> AsyncIterator[bytes]:
        asked.append(offset)
        return pieces(b"0123456789"[offset:])

    assert await collect(from_offset, 7, 2) == [b"78", b"9"]
    assert asked == [7]


async def test_source_generator_is_closed_when_abandoned() -> None:
    closed = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 10
        finally:
            closed.append(True)

    async with open_source(endless(), 0, 4) as chunks:
        async for _ in chunks:
            break
    assert closed == [True]


async def test_recut_hands_out_parts_without_copying() -> None:
    big = b"0123456789"
    got = [parts async for parts in _recut(pieces(b"ab", big, b"", b"c"), 4)]
    assert [b"".join(parts) for parts in got] == [b"ab01", b"2345", b"6789", b"c"]
    # A chunk that is a piece already is passed on as it is; the others are views of theirs.
    assert got[0][0] == b"ab" and isinstance(got[0][1], memoryview)
    assert got[0][1].obj is big and got[1][0].obj is big  # type: ignore[union-attr]
    exact = b"wxyz"
    (only,) = [parts async for parts in _recut(pieces(exact), 4)]
    assert only == [exact] and only[0] is exact


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 300, 1 << 20, 5 << 40])
@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 600])
def test_hand_encoded_write_is_what_protobuf_writes(offset: int, data: bytes) -> None:
    half = len(data) // 2
    encoded = _write_request(offset, [data[:half], memoryview(data)[half:]], len(data))
    expected = content_pb2.WriteContentRequest(action=content_pb2.WRITE, offset=offset, data=data)
    assert encoded.data == expected.SerializeToString()
    parsed = content_pb2.WriteContentRequest.FromString(encoded.data)
    assert (parsed.action, parsed.offset, parsed.data) == (content_pb2.WRITE, offset, data)


def test_gc_labels_use_containerds_names() -> None:
    def desc(digest: str) -> Descriptor:
        return Descriptor(media_type="m", digest=digest, size=1)

    assert manifest_gc_labels(desc(D[0]), [desc(D[1]), desc(D[2])]) == {
        "containerd.io/gc.ref.content.config": D[0],
        "containerd.io/gc.ref.content.l.0": D[1],
        "containerd.io/gc.ref.content.l.1": D[2],
    }
    assert index_gc_labels([desc(D[3]), desc(D[4])]) == {
        "containerd.io/gc.ref.content.m.0": D[3],
        "containerd.io/gc.ref.content.m.1": D[4],
    }
    assert config_gc_labels("overlayfs", D[5]) == {"containerd.io/gc.ref.snapshot.overlayfs": D[5]}


@pytest.mark.parametrize(
    "bad", ["", "sha256:", "sha256:" + "A" * 64, "sha512:" + "a" * 64, "sha256:" + "a" * 63]
)
def test_invalid_digests(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid digest"):
        validate_digest(bad)


def test_descriptor_of_any_descriptor_like() -> None:
    class Other:
        def __init__(self) -> None:
            self.media_type = "m"
            self.digest = D[0]
            self.size = 3
            self.annotations = {"a": "b"}

    assert Descriptor.of(Other()) == Descriptor(
        media_type="m", digest=D[0], size=3, annotations={"a": "b"}
    )
    proto = Descriptor.of(Other()).to_proto()
    assert (proto.media_type, proto.digest, proto.size, dict(proto.annotations)) == (
        "m",
        D[0],
        3,
        {"a": "b"},
    )
