"""The stdio half of the control plane: Kubernetes channel framing (v5.channel.k8s.io).

Every binary frame starts with one channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error
(a k8s Status JSON when the process ends), 4 resize (``{"Width": w, "Height": h}``) and,
in v5 only, 255 close (``[255, channel]`` half-closes a stream, typically stdin for EOF).
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, TypeAlias

import msgspec

from ..errors import InvalidArgument

STDIO_SUBPROTOCOLS: Final = ("v5.channel.k8s.io", "v4.channel.k8s.io")
CellCount: TypeAlias = Annotated[int, msgspec.Meta(ge=1, le=65_535)]
_encoder: Final = msgspec.json.Encoder()


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- k8s channel framing for stdio ---------------------------------------------------------


class Channel(enum.IntEnum):
    """The first byte of every stdio frame."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2
    ERROR = 3
    RESIZE = 4
    CLOSE = 255


_STREAMS: Final = frozenset({Channel.STDIN, Channel.STDOUT, Channel.STDERR})


class TerminalSize(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A resize request, as the k8s resize channel carries it."""

    width: CellCount = msgspec.field(name="Width")
    height: CellCount = msgspec.field(name="Height")


_resize_decoder: Final = msgspec.json.Decoder(TerminalSize)


def encode_frame(channel: int, data: bytes) -> bytes:
    """One binary frame: the channel byte, then the payload.

    Raises:
        InvalidArgument: ``channel`` is not 0..255.
    """
    if not 0 <= channel <= 255:
        raise InvalidArgument(f"channel must be 0..255, got {channel}", local=True)
    return bytes((channel,)) + data


def decode_frame(
    frame: bytes | bytearray | memoryview, *, subprotocol: str = STDIO_SUBPROTOCOLS[0]
) -> tuple[Channel, bytes] | None:
    """Split a binary frame into its channel and payload.

    Like the k8s server, returns None (ignore it) for an empty frame or an unknown channel;
    CLOSE is only a channel under ``v5.channel.k8s.io``.
    """
    view = memoryview(frame).cast("B")
    if not view.nbytes:
        return None
    try:
        channel = Channel(view[0])
    except ValueError:
        return None
    if channel is Channel.CLOSE and subprotocol != STDIO_SUBPROTOCOLS[0]:
        return None
    return channel, view[1:].tobytes()


def parse_resize(payload: bytes) -> TerminalSize:
    """Parse a RESIZE payload, ``{"Width": w, "Height": h}`` with each in 1..65535.

    Raises:
        InvalidArgument: any other payload.
    """
    if len(payload) > 256:
        raise InvalidArgument("invalid resize message: too long", local=True)
    try:
        return _resize_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(
            f"invalid resize message: {clip(str(exc), 200)}", local=True
        ) from None


def resize_frame(width: int, height: int) -> bytes:
    """A RESIZE frame (what a client sends)."""
    return encode_frame(Channel.RESIZE, _encoder.encode(TerminalSize(width=width, height=height)))


def parse_close(payload: bytes) -> Channel:
    """Parse a CLOSE payload: the one byte naming the stream to half-close.

    Raises:
        InvalidArgument: not exactly one byte naming stdin, stdout or stderr.
    """
    if len(payload) == 1 and payload[0] in _STREAMS:
        return Channel(payload[0])
    raise InvalidArgument(
        "invalid close message: expected one byte naming stdin (0), stdout (1) or stderr (2)",
        local=True,
    )


def close_frame(channel: int) -> bytes:
    """A CLOSE frame half-closing ``channel`` (v5 only; typically stdin, for EOF)."""
    return encode_frame(Channel.CLOSE, bytes((channel,)))


def exit_status_message(exit_code: int) -> bytes:
    """The k8s Status JSON sent on the ERROR channel when the process ends."""
    if exit_code == 0:
        return _encoder.encode({"metadata": {}, "status": "Success"})
    return _encoder.encode(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code {exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    )


def failure_status_message(message: str) -> bytes:
    """A k8s Status JSON for a stream that failed without an exit code (e.g. exec failed)."""
    return _encoder.encode(
        {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}
    )
