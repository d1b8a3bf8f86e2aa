"""Sans-IO core of the websocket control plane: JSON-RPC messages, events and stdio frames.

A client holds two kinds of websocket. The control socket (subprotocol
:data:`JSONRPC_SUBPROTOCOL`) carries JSON-RPC 2.0 in text frames: requests, their replies,
and event notifications. Process stdio never rides on it; ``stdio.attach`` hands out a token
for a second socket that speaks the Kubernetes channel framing (:data:`STDIO_SUBPROTOCOLS`),
so kubectl-style clients and xterm.js glue work unchanged.

Everything here is a pure function of its input: no sockets, no Trio, no clock except as a
fallback for events without a timestamp. Decoding is fail-closed: :func:`decode_request`
returns a :class:`Request` or an :class:`ErrorResponse` and never raises, and nothing is
ever executed from a partially understood message.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
import secrets
import signal as _signal
import time
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeAlias

import msgspec

from ..core._ids import _ID_PATTERN, MAX_ID_LENGTH
from ..core.events import EPOCH, EventType, TaskEvent
from ..errors import ActorCrashed, ClientClosed, ContainerdError, InvalidArgument

# The stdio framing is the other half of the protocol; re-exported for one import site.
from ._frames import (  # noqa: F401
    STDIO_SUBPROTOCOLS,
    CellCount,
    Channel,
    TerminalSize,
    clip,
    close_frame,
    decode_frame,
    encode_frame,
    exit_status_message,
    failure_status_message,
    parse_close,
    parse_resize,
    resize_frame,
)

if TYPE_CHECKING:
    from collections.abc import Mapping


JSONRPC_SUBPROTOCOL: Final = "containerd-actors.v1"
# Newest first: v5 adds the CLOSE channel (stdin EOF); v4 clients still get exit codes.

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
_DOMAIN_ERROR_BASE: Final = -32000


class DecodeLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Shape limits checked before a request is parsed (sizes are of the encoded JSON)."""

    max_message_bytes: int = 1 << 20
    max_depth: int = 64
    max_array_length: int = 10_000
    max_string_length: int = 1 << 20


DEFAULT_LIMITS: Final = DecodeLimits()

# --- field types ---------------------------------------------------------------------------

_ID_RE: Final = rf"\A(?:{_ID_PATTERN.pattern})\Z"
_NO_NUL_RE: Final = r"\A[^\x00]*\Z"
_ABS_PATH_RE: Final = r"\A/[^\x00]*\Z"
_ENV_RE: Final = r"\A[^=\x00]+=[^\x00]*\Z"
_HOSTNAME_RE: Final = (
    r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
_TOKENISH_RE: Final = r"\A[A-Za-z0-9_-]+\Z"
_RESTART_RE: Final = r"\A(?:no|always|unless-stopped|on-failure(?::[0-9]{1,9})?)\Z"

# msgspec reports a failed pattern as the regex itself; clients get a description instead.
_PATTERN_HINTS: Final = {
    _ID_RE: f"an identifier of letters and digits joined by single '.', '_' or '-' "
    f"(at most {MAX_ID_LENGTH} characters)",
    _NO_NUL_RE: "a string without NUL bytes",
    _ABS_PATH_RE: "an absolute path without NUL bytes",
    _ENV_RE: "a KEY=VALUE entry",
    _HOSTNAME_RE: "an RFC 1123 hostname",
    _TOKENISH_RE: "letters, digits, '_' or '-'",
    _RESTART_RE: "a restart policy: no, always, unless-stopped or on-failure[:N]",
}

ContainerId: TypeAlias = Annotated[str, msgspec.Meta(pattern=_ID_RE, max_length=MAX_ID_LENGTH)]
Arg: TypeAlias = Annotated[str, msgspec.Meta(pattern=_NO_NUL_RE, max_length=4096)]
Args: TypeAlias = Annotated[list[Arg], msgspec.Meta(min_length=1, max_length=256)]
EnvList: TypeAlias = Annotated[
    list[Annotated[str, msgspec.Meta(pattern=_ENV_RE, max_length=32768)]],
    msgspec.Meta(max_length=1024),
]
ImageName: TypeAlias = Annotated[
    str, msgspec.Meta(pattern=_NO_NUL_RE, min_length=1, max_length=512)
]
AbsPath: TypeAlias = Annotated[str, msgspec.Meta(pattern=_ABS_PATH_RE, max_length=4096)]
Hostname: TypeAlias = Annotated[str, msgspec.Meta(pattern=_HOSTNAME_RE, max_length=64)]
Labels: TypeAlias = Annotated[
    dict[
        Annotated[str, msgspec.Meta(pattern=_NO_NUL_RE, min_length=1, max_length=256)],
        Annotated[str, msgspec.Meta(pattern=_NO_NUL_RE, max_length=4096)],
    ],
    msgspec.Meta(max_length=64),
]
PositiveInt64: TypeAlias = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
# The kernel's cpu.shares range.
CpuShares: TypeAlias = Annotated[int, msgspec.Meta(ge=2, le=262_144)]
# (uid_t)-1 means "unchanged" to set*id(2), so the top value is not a usable id.
UnixId: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 2)]
SignalValue: TypeAlias = int | Annotated[str, msgspec.Meta(max_length=32)]
NamespaceType: TypeAlias = Literal["pid", "network", "ipc", "uts", "mount", "user", "cgroup"]
# JS clients cannot represent integers beyond 2**53 exactly; larger ids would not round-trip.
RequestId: TypeAlias = (
    Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]
    | Annotated[str, msgspec.Meta(max_length=256)]
    | None
)


class EventAction(enum.StrEnum):
    """Docker's container event actions that containerd task events map to."""

    CREATE = "create"
    START = "start"
    DIE = "die"
    OOM = "oom"
    EXEC_CREATE = "exec_create"
    EXEC_START = "exec_start"
    EXEC_DIE = "exec_die"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    # A containerd task event we do not map (EventType.UNKNOWN); Docker has no such action,
    # but dropping the event would hide it.
    UNKNOWN = "unknown"


# --- params --------------------------------------------------------------------------------


class Params(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every method's params; unknown fields are an error, never ignored."""


class NoParams(Params, frozen=True):
    """Params of ``version`` and ``container.list``."""


class IdParams(Params, frozen=True):
    """Params naming one container (inspect, delete, pause, resume, stats, pids, wait)."""

    id: ContainerId


class UserParams(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Numeric identity of the init process."""

    uid: UnixId
    gid: UnixId


# ``user[:group]`` by name (``app``, ``www-data:www-data``, ``1000:staff``): resolved in the
# image's own /etc/passwd and /etc/group by the server (container.create with an image only).
UserName: TypeAlias = Annotated[
    str,
    msgspec.Meta(
        pattern=r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\$?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\$?)?\Z",
        max_length=130,
    ),
]


class MountParams(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A requested bind mount; the policy decides whether the host path may be used."""

    source: AbsPath
    destination: AbsPath
    readonly: bool = True


class LogParams(Params, frozen=True):
    """Per-container log settings: rotation, and whether output may be dropped (``lossy``,
    with a ``buffer_size`` bound) instead of blocking the container when the log lags."""

    max_size: Annotated[int, msgspec.Meta(ge=4096, le=1 << 40)] | None = None
    max_files: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    mode: Literal["blocking", "lossy"] = "blocking"
    buffer_size: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] | None = None
    execs: bool = False  # also log what exec'd processes write (off by default, as docker)


class ContainerCreateParams(Params, frozen=True):
    """An intent to create a container; the server builds the OCI spec from it by policy.

    ``privileged``, ``hooks`` and ``namespaces`` are accepted here only so that the policy
    can refuse them with a clear reason instead of an "unknown field" error.
    """

    id: ContainerId
    # Optional with an image (its Entrypoint/Cmd apply); required for a directory rootfs.
    args: Args | None = None
    rootfs: AbsPath | None = None
    # An image in the server's store (docker's short names work); see image.pull.
    image: ImageName | None = None
    # Replaces the image's Entrypoint (and drops its Cmd); [""] clears it, like docker.
    entrypoint: Annotated[list[Arg], msgspec.Meta(max_length=256)] | None = None
    env: EnvList | None = None
    cwd: AbsPath | None = None
    # Numeric ids, or a name to look up in the image (see UserName).
    user: UserParams | UserName | None = None
    terminal: bool = False
    hostname: Hostname | None = None
    labels: Labels = msgspec.field(default_factory=dict)
    memory_limit: PositiveInt64 | None = None
    pids_limit: PositiveInt64 | None = None
    cpu_shares: CpuShares | None = None
    readonly_rootfs: bool = False
    mounts: Annotated[list[MountParams], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    namespaces: Annotated[list[NamespaceType], msgspec.Meta(max_length=16)] | None = None
    capabilities_add: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=_TOKENISH_RE, max_length=64)]],
        msgspec.Meta(max_length=64),
    ] = msgspec.field(default_factory=list)
    privileged: bool = False
    hooks: dict[str, Any] | None = None
    log: LogParams | None = None
    # Removed by the server when its task exits (docker's --rm), even with no client attached.
    auto_remove: bool = False
    # What ``container.stop`` sends first (docker's --stop-signal); SIGTERM when unset.
    stop_signal: SignalValue | None = None
    # docker's --restart: no, always, unless-stopped or on-failure[:N].
    restart: Annotated[str, msgspec.Meta(pattern=_RESTART_RE, max_length=32)] | None = None


class TaskStartParams(Params, frozen=True):
    """``attach`` also returns a stdio ticket (as ``stdio.attach`` would) in the same call, so
    an auto-remove container is not removed before its client reads the output."""

    id: ContainerId
    stdin: bool = False
    attach: bool = False


class TaskKillParams(Params, frozen=True):
    """``signal`` is a number or a name; :attr:`signo` is the validated number."""

    id: ContainerId
    signal: SignalValue
    all: bool = False

    @property
    def signo(self) -> int:
        return parse_signal(self.signal)


class TaskStatusParams(Params, frozen=True):
    id: ContainerId
    refresh: bool = False


class TaskResizeParams(Params, frozen=True):
    id: ContainerId
    width: CellCount
    height: CellCount


class TaskUpdateParams(Params, frozen=True):
    """At least one limit must be given (checked after decoding)."""

    id: ContainerId
    memory_limit: PositiveInt64 | None = None
    pids_limit: PositiveInt64 | None = None
    cpu_shares: CpuShares | None = None


class ProcessExecParams(Params, frozen=True):
    id: ContainerId
    exec_id: ContainerId
    args: Args
    env: EnvList | None = None
    cwd: AbsPath | None = None
    terminal: bool = False
    stdin: bool = False
    user: UserParams | None = None


class ProcessParams(Params, frozen=True):
    """Params naming one exec'd process (delete, wait)."""

    id: ContainerId
    exec_id: ContainerId


class ProcessKillParams(Params, frozen=True):
    id: ContainerId
    exec_id: ContainerId
    signal: SignalValue

    @property
    def signo(self) -> int:
        return parse_signal(self.signal)


class EventFilters(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Docker-style event filters; see :class:`EventFilter` for the matching rules."""

    container: Annotated[list[ContainerId], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    event: Annotated[list[EventAction], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    label: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=_NO_NUL_RE, min_length=1, max_length=4096)]],
        msgspec.Meta(max_length=64),
    ] = msgspec.field(default_factory=list)


class EventsSubscribeParams(Params, frozen=True):
    """``since`` (unix nanoseconds) replays the matching events the server still keeps."""

    filters: EventFilters | None = None
    since: Annotated[int, msgspec.Meta(ge=0)] | None = None


class EventsUnsubscribeParams(Params, frozen=True):
    subscription: Annotated[str, msgspec.Meta(pattern=_TOKENISH_RE, max_length=64)]


class StdioAttachParams(Params, frozen=True):
    """``replay``: a task's output from the start of its log (``run``), not only new output."""

    id: ContainerId
    exec_id: ContainerId | None = None
    replay: bool = False


Nanoseconds: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class ContainerLogsParams(Params, frozen=True):
    """A read of a container's log (docker's options; times in ns since the epoch)."""

    id: ContainerId
    follow: bool = False
    tail: Annotated[int, msgspec.Meta(ge=0, le=2**31)] | None = None
    since: Nanoseconds | None = None
    until: Nanoseconds | None = None
    timestamps: bool = False
    stdout: bool = True
    stderr: bool = True


# -- images (handled by _images_rpc.ImageMethods) --------------------------------------

#: Raw bytes per image.load / image.save piece (base64 on the wire, under the frame limit).
IMAGE_PIECE_BYTES: Final = 512 << 10
_IMAGE_TOKEN_RE: Final = r"\A[A-Za-z0-9_.-]{1,64}\Z"
ImageToken: TypeAlias = Annotated[str, msgspec.Meta(pattern=_IMAGE_TOKEN_RE)]
Secret: TypeAlias = Annotated[str, msgspec.Meta(pattern=_NO_NUL_RE, max_length=4096)]
_PLATFORM_RE: Final = r"\A[a-z0-9_.]+/[a-z0-9_.]+(/[a-z0-9_.]+)?\Z"
PlatformName: TypeAlias = Annotated[str, msgspec.Meta(pattern=_PLATFORM_RE)]
# base64 of one piece (4/3 of IMAGE_PIECE_BYTES, rounded up).
Piece: TypeAlias = Annotated[str, msgspec.Meta(max_length=(IMAGE_PIECE_BYTES * 4) // 3 + 4)]


class ImagePullParams(Params, frozen=True):
    reference: ImageName
    platform: PlatformName | None = None
    progress: ImageToken | None = None
    username: Secret | None = None
    password: Secret | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"ImagePullParams(reference={self.reference!r})"


class ImageNameParams(Params, frozen=True):
    name: ImageName


class ImageInspectParams(ImageNameParams, frozen=True):
    """``image.inspect``."""


class ImageRemoveParams(ImageNameParams, frozen=True):
    """``image.remove``."""


class ImageListParams(Params, frozen=True):
    pass


class ImageLoadParams(Params, frozen=True):
    upload: ImageToken | None = None
    data: Piece = ""
    done: bool = False


class ImageSaveParams(Params, frozen=True):
    names: Annotated[list[ImageName], msgspec.Meta(min_length=1, max_length=64)] = []
    download: ImageToken | None = None
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


IMAGE_METHODS: Final[Mapping[str, type[Params]]] = {
    "image.pull": ImagePullParams,
    "image.list": ImageListParams,
    "image.inspect": ImageInspectParams,
    "image.remove": ImageRemoveParams,
    "image.load": ImageLoadParams,
    "image.save": ImageSaveParams,
}


# One params class per method, so the class alone names the method and leads the gateway to
# its handler; methods with the same fields share a base.


class VersionParams(NoParams, frozen=True):
    """``version``."""


class ContainerListParams(NoParams, frozen=True):
    """``container.list``."""


class ContainerInspectParams(IdParams, frozen=True):
    """``container.inspect``."""


class ContainerDeleteParams(IdParams, frozen=True):
    """``container.delete``."""


class TaskPauseParams(IdParams, frozen=True):
    """``task.pause``."""


class TaskResumeParams(IdParams, frozen=True):
    """``task.resume``."""


class TaskStatsParams(IdParams, frozen=True):
    """``task.stats``."""


class TaskPidsParams(IdParams, frozen=True):
    """``task.pids``."""


class TaskDeleteParams(IdParams, frozen=True):
    """``task.delete``."""


class TaskWaitParams(IdParams, frozen=True):
    """``task.wait``."""


class ContainerStopParams(Params, frozen=True):
    """``container.stop``: the stop signal, then SIGKILL after ``timeout`` seconds (docker's
    default 10); ``signal`` overrides the container's stop signal."""

    id: ContainerId
    timeout: Annotated[int, msgspec.Meta(ge=0, le=86_400)] | None = None
    signal: SignalValue | None = None


class TaskTopParams(IdParams, frozen=True):
    """``task.top``."""


class ProcessDeleteParams(ProcessParams, frozen=True):
    """``process.delete``."""


class ProcessWaitParams(ProcessParams, frozen=True):
    """``process.wait``."""


#: Every method and the Struct its params decode to: the one table of the protocol. Each
#: method has its own class (the gateway finds the handler from it), so adding a method is
#: one entry here plus its handler.
METHODS: Final[Mapping[str, type[Params]]] = {
    "version": VersionParams,
    "container.create": ContainerCreateParams,
    "container.list": ContainerListParams,
    "container.inspect": ContainerInspectParams,
    "container.delete": ContainerDeleteParams,
    "container.stop": ContainerStopParams,
    "task.start": TaskStartParams,
    "task.kill": TaskKillParams,
    "task.pause": TaskPauseParams,
    "task.resume": TaskResumeParams,
    "task.stats": TaskStatsParams,
    "task.pids": TaskPidsParams,
    "task.top": TaskTopParams,
    "task.status": TaskStatusParams,
    "task.resize": TaskResizeParams,
    "task.update": TaskUpdateParams,
    "task.delete": TaskDeleteParams,
    "task.wait": TaskWaitParams,
    "process.exec": ProcessExecParams,
    "process.kill": ProcessKillParams,
    "process.delete": ProcessDeleteParams,
    "process.wait": ProcessWaitParams,
    "events.subscribe": EventsSubscribeParams,
    "events.unsubscribe": EventsUnsubscribeParams,
    "stdio.attach": StdioAttachParams,
    "container.logs": ContainerLogsParams,
    **IMAGE_METHODS,
}
if len(set(METHODS.values())) != len(METHODS):
    raise RuntimeError("every method needs its own params class")


def _post_check(params: Params) -> tuple[str, str] | None:
    # What msgspec's constraints cannot express; returns (field, reason) on failure.
    if isinstance(params, TaskKillParams | ProcessKillParams | ContainerStopParams):
        try:
            if params.signal is not None:
                parse_signal(params.signal)
        except InvalidArgument as exc:
            return "signal", exc.message
    elif isinstance(params, ContainerCreateParams) and params.stop_signal is not None:
        try:
            parse_signal(params.stop_signal)
        except InvalidArgument as exc:
            return "stop_signal", exc.message
    elif isinstance(params, TaskUpdateParams) and params == TaskUpdateParams(id=params.id):
        return "", "nothing to update: give memory_limit, pids_limit or cpu_shares"
    elif isinstance(params, ContainerLogsParams):
        if not (params.stdout or params.stderr):
            return "", "nothing to read: stdout and stderr are both off"
        if params.since is not None and params.until is not None and params.since > params.until:
            return "since", "since is after until"
    return None


# --- wire messages -------------------------------------------------------------------------


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: Literal["2.0"]
    method: Annotated[str, msgspec.Meta(max_length=128)]
    id: RequestId | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw = msgspec.Raw(b"{}")


class _IdProbe(msgspec.Struct):
    id: RequestId = None


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """A fully validated request.

    Attributes:
        id: echoed in the reply; None for notifications (and for an explicit null id).
        method: one of :data:`METHODS`.
        params: the method's params Struct.
        notification: the request had no ``id`` member, so JSON-RPC forbids any reply.
    """

    id: int | str | None
    method: str
    params: Params
    notification: bool = False


class ErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    """An error reply ready for :func:`encode_error`.

    ``notification`` is True when the failed message was a well-formed notification; JSON-RPC
    says such failures get no reply, so the server should only log them.
    """

    id: int | str | None
    code: int
    message: str
    data: dict[str, Any] | None = None
    notification: bool = False


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_id_probe_decoder: Final = msgspec.json.Decoder(_IdProbe)
_syntax_decoder: Final = msgspec.json.Decoder(msgspec.Raw)
_params_decoders: Final = {cls: msgspec.json.Decoder(cls) for cls in set(METHODS.values())}
_encoder: Final = msgspec.json.Encoder()

# --- decoding ------------------------------------------------------------------------------

# One JSON string (escapes skipped, an unterminated one runs to the end, so the pattern
# never backtracks) or one structural character. Used only when a cheap bound says a limit
# might be crossed.
_SCAN_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)|[\[\]{},]', re.DOTALL)
_OPENERS: Final = frozenset(b"[{")
_CLOSERS: Final = frozenset(b"]}")
_QUOTE: Final = ord('"')


def _shape_violation(data: bytes, limits: DecodeLimits) -> str | None:
    # msgspec recurses per nesting level and materialises whole arrays, so depth and width
    # are bounded here, before it sees the data.
    if (
        data.count(b"[") + data.count(b"{") <= limits.max_depth
        and data.count(b",") < limits.max_array_length
        and len(data) <= limits.max_string_length + 2
    ):
        return None
    commas: list[int] = []
    for match in _SCAN_TOKEN.finditer(data):
        start = match.start()
        char = data[start]
        if char == _QUOTE:
            if match.end() - start - 2 > limits.max_string_length:
                return f"a string is longer than {limits.max_string_length} bytes"
        elif char in _OPENERS:
            if len(commas) >= limits.max_depth:
                return f"nesting is deeper than {limits.max_depth}"
            commas.append(0)
        elif char in _CLOSERS:
            if commas:
                commas.pop()
        elif commas:  # a comma
            commas[-1] += 1
            if commas[-1] >= limits.max_array_length:
                return f"an array or object has more than {limits.max_array_length} items"
    return None


_ERROR_AT: Final = re.compile(r"\A(.*) - at (`key` in )?`\$([^`]*)`\Z", re.S)
_MESSAGES: Final = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}


def _fail(
    code: int, *, id: int | str | None = None, notification: bool = False, **data: str
) -> ErrorResponse:
    return ErrorResponse(
        id=id, code=code, message=_MESSAGES[code], data=data or None, notification=notification
    )


def _explain(exc: msgspec.DecodeError, root: str) -> tuple[str, str]:
    text, path = str(exc), root
    match = _ERROR_AT.match(text)
    if match is not None:
        text = match[1] + (" (in an object key)" if match[2] else "")
        path = root + match[3]
    for pattern, hint in _PATTERN_HINTS.items():
        text = text.replace(f"`str` matching regex {pattern!r}", hint)
    return path, clip(text, 300)


def _as_utf8(text: str | bytes | bytearray | memoryview, limit: int) -> bytes | ErrorResponse:
    # A str has at least one byte per character, so both checks reject before any copy.
    size = len(text) if isinstance(text, str) else memoryview(text).nbytes
    if size > limit:
        return _fail(INVALID_REQUEST, reason=f"message is larger than {limit} bytes")
    try:
        if isinstance(text, str):
            data = text.encode("utf-8")
        else:
            data = bytes(text)
            # msgspec checks UTF-8 only in strings it decodes, not in skipped values.
            if not data.isascii():
                data.decode("utf-8")
    except UnicodeError:
        return _fail(PARSE_ERROR, reason="invalid UTF-8")
    if len(data) > limit:
        return _fail(INVALID_REQUEST, reason=f"message is larger than {limit} bytes")
    return data


def _salvage_id(data: bytes) -> int | str | None:
    # The envelope was wrong, but echoing a readable id lets the client match the error.
    try:
        return _id_probe_decoder.decode(data).id
    except (msgspec.DecodeError, RecursionError):
        return None


def _decode(
    text: str | bytes | bytearray | memoryview, limits: DecodeLimits
) -> Request | ErrorResponse:
    data = _as_utf8(text, limits.max_message_bytes)
    if isinstance(data, ErrorResponse):
        return data
    violation = _shape_violation(data, limits)
    if violation is not None:
        return _fail(INVALID_REQUEST, id=_salvage_id(data), reason=violation)
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        try:
            # The envelope decoder stops at the first wrong type; JSON-RPC wants a parse
            # error for anything that is not JSON at all.
            _syntax_decoder.decode(data)
        except msgspec.DecodeError as syntax:
            return _fail(PARSE_ERROR, reason=str(syntax))
        if data.lstrip()[:1] == b"[":
            return _fail(INVALID_REQUEST, reason="batch requests are not supported")
        path, reason = _explain(exc, "$")
        return _fail(INVALID_REQUEST, id=_salvage_id(data), path=path, reason=reason)
    except msgspec.DecodeError as exc:
        return _fail(PARSE_ERROR, reason=str(exc))
    notification = isinstance(envelope.id, msgspec.UnsetType)
    request_id = None if isinstance(envelope.id, msgspec.UnsetType) else envelope.id
    params_type = METHODS.get(envelope.method)
    if params_type is None:
        return _fail(
            METHOD_NOT_FOUND, id=request_id, notification=notification, method=envelope.method
        )
    try:
        params = _params_decoders[params_type].decode(envelope.params)
    except msgspec.DecodeError as exc:
        path, reason = _explain(exc, "$.params")
        return _fail(
            INVALID_PARAMS, id=request_id, notification=notification, path=path, reason=reason
        )
    problem = _post_check(params)
    if problem is not None:
        path = f"$.params.{problem[0]}" if problem[0] else "$.params"
        return _fail(
            INVALID_PARAMS, id=request_id, notification=notification, path=path, reason=problem[1]
        )
    return Request(id=request_id, method=envelope.method, params=params, notification=notification)


def decode_request(
    text: str | bytes | bytearray | memoryview, *, limits: DecodeLimits = DEFAULT_LIMITS
) -> Request | ErrorResponse:
    """Decode and validate one JSON-RPC request; never raises.

    Decoding runs in stages that each fail closed: size and UTF-8 (-32700 for bad UTF-8,
    -32600 when too large), nesting depth, array width and string length (-32600), JSON
    syntax (-32700), the envelope (-32600; batches are refused), the method name (-32601),
    then the method's params (-32602, with the failing path in ``data["path"]``).

    Args:
        text: one websocket message.
        limits: the shape limits to enforce.

    Returns:
        The request, or the error to send back (see :attr:`ErrorResponse.notification`).
    """
    try:
        return _decode(text, limits)
    except Exception:
        # A bug here must not become an exception in the connection loop, nor a request
        # that runs half-understood.
        return _fail(INTERNAL_ERROR)


def parse_signal(value: int | str) -> int:
    """Parse a signal given as a number (1..64), a numeric string, or a name.

    Names are case-insensitive, with or without the ``SIG`` prefix (``"SIGTERM"``,
    ``"term"``), and include ``RTMIN+n`` / ``RTMAX-n``.

    Raises:
        InvalidArgument: anything else.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and len(value) <= 32:
        name = value.upper()
        if name.isascii() and name.isdigit():
            number = int(name)
        else:
            number = _signal_by_name(name.removeprefix("SIG"))
    if number is None or not 1 <= number <= _SIGNAL_MAX:
        shown = clip(repr(value), 40)
        raise InvalidArgument(
            f"invalid signal {shown}: expected 1..{_SIGNAL_MAX}, or a name such as "
            "'SIGTERM' or 'KILL'",
            local=True,
        )
    return number


_SIGNAL_MAX: Final = 64
_SIGNALS: Final = {
    name.removeprefix("SIG"): int(member)
    for name, member in _signal.Signals.__members__.items()
    if name.startswith("SIG") and not name.startswith("SIG_")
}
_RT_OFFSET: Final = re.compile(r"\A(RTMIN)\+([0-9]{1,2})\Z|\A(RTMAX)-([0-9]{1,2})\Z")


def _signal_by_name(name: str) -> int | None:
    match = _RT_OFFSET.match(name)
    if match is None:
        return _SIGNALS.get(name)
    low, high = _SIGNALS.get("RTMIN"), _SIGNALS.get("RTMAX")
    if low is None or high is None:
        return None
    number = low + int(match[2]) if match[1] else high - int(match[4])
    return number if low <= number <= high else None


# --- encoding ------------------------------------------------------------------------------


def domain_error_code(grpc_code: int) -> int:
    """The JSON-RPC code for a gRPC status: ``-32000 - grpc_code`` (NotFound is -32005)."""
    return _DOMAIN_ERROR_BASE - grpc_code


_log = logging.getLogger("containerd_actors.gateway")
# An absolute path: a "/" not preceded by a name character (so "a/b" and "sha256:x" stay),
# up to whitespace, a quote or a bracket (a colon just before one stays: "stat /x: no such
# file"). "unix:///run/x" and "src:/dst" lose both paths.
_HOST_PATH_RE: Final = re.compile(
    r"(?<![\w.~-])/[^\s\"'`()\[\]{},;]*?(?=:?(?:[\s\"'`()\[\]{},;]|$))"
)


def redact_host_paths(text: str) -> str:
    """``text`` with every absolute path replaced by ``<path>``."""
    return _HOST_PATH_RE.sub("<path>", text)


def error_response(request_id: int | str | None, exc: Exception) -> ErrorResponse:
    """Map an exception raised while serving a request to its error reply.

    Our :class:`~actors.errors.ContainerdError` classes keep their message and become
    ``-32000 - grpc_code`` with ``data = {"status", "grpc_code", "local"}``. Text that came
    from containerd, a shim or runc (``local=False``) names host paths (rootfs, bundle,
    cgroup, FIFO, bind source, symlink targets): every absolute path in it is replaced by
    ``<path>`` and the original is logged with a reference the reply carries (see
    :func:`redact_host_paths`). Our own (``local``) messages name only what the caller sent.
    An actor crash
    or a closing client is reported as UNAVAILABLE (retrying is safe). Anything else is a
    bug: it becomes -32603 with a fixed message, so no internal text reaches the client.
    """
    if isinstance(exc, ContainerdError):
        status, grpc_code, message, local = (
            exc.error_class.value,
            exc.grpc_code,
            exc.message,
            exc.local,
        )
    elif isinstance(exc, ActorCrashed | ClientClosed):
        status, grpc_code, local = "UNAVAILABLE", 14, True
        message = (
            "the container's actor restarted; retry the call"
            if isinstance(exc, ActorCrashed)
            else "the server is shutting down"
        )
    else:
        return _fail(INTERNAL_ERROR, id=request_id)
    if not local:
        redacted = redact_host_paths(message)
        if redacted != message:
            reference = secrets.token_hex(4)
            _log.warning("error %s sent to the client as %r was: %s", reference, redacted, message)
            message = f"{redacted} (server log reference {reference})"
    data = {"status": status, "grpc_code": grpc_code, "local": local}
    return ErrorResponse(
        id=request_id, code=domain_error_code(grpc_code), message=message, data=data
    )


def encode_error(error: ErrorResponse) -> bytes:
    """Encode an error reply; never raises (what cannot be encoded is dropped)."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    try:
        return _encoder.encode({"jsonrpc": "2.0", "id": error.id, "error": body})
    except Exception:
        # e.g. a lone surrogate in text the caller built: the code must still get out.
        request_id = error.id if isinstance(error.id, int) else None
        fallback = {"code": error.code, "message": _MESSAGES.get(error.code, "Server error")}
        return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "error": fallback})


def encode_result(request_id: int | str | None, result: Any) -> bytes:
    """Encode a success reply; ``result`` may be any msgspec-encodable value.

    Raises:
        TypeError: ``result`` holds a type msgspec cannot encode.
    """
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def encode_notification(method: str, params: Any) -> bytes:
    """Encode a server-to-client notification (no id, no reply expected)."""
    return _encoder.encode({"jsonrpc": "2.0", "method": method, "params": params})


# --- events --------------------------------------------------------------------------------


class EventActor(msgspec.Struct, frozen=True, kw_only=True):
    """Docker's event actor: the container id and string attributes."""

    id: str = msgspec.field(name="ID")
    attributes: dict[str, str] = msgspec.field(name="Attributes")


class EventMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A task event shaped like Docker's ``/events`` message plus containerd's routing keys."""

    type: str = msgspec.field(default="container", name="Type")
    action: EventAction = msgspec.field(name="Action")
    actor: EventActor = msgspec.field(name="Actor")
    scope: str = "local"
    time: int
    time_nano: int = msgspec.field(name="timeNano")
    topic: str
    namespace: str


_ACTIONS: Final = {
    EventType.CREATE: EventAction.CREATE,
    EventType.START: EventAction.START,
    EventType.OOM: EventAction.OOM,
    EventType.EXEC_ADDED: EventAction.EXEC_CREATE,
    EventType.EXEC_STARTED: EventAction.EXEC_START,
    EventType.PAUSED: EventAction.PAUSE,
    EventType.RESUMED: EventAction.UNPAUSE,
    EventType.UNKNOWN: EventAction.UNKNOWN,
}


def _unix_nanos(when: dt.datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - EPOCH
    # Integer arithmetic: a float would lose the nanosecond digits.
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def event_message(
    event: TaskEvent, attributes: Mapping[str, str] | None = None, *, now_ns: int | None = None
) -> EventMessage:
    """Project a task event onto Docker's event message.

    Args:
        event: the decoded containerd event.
        attributes: the container's labels (plus e.g. ``image`` if known). Our own keys
            (``name``, which is the container id, ``exitCode``, ``execID``, ``pid``) are
            written after them, so a label cannot spoof them: a label ``name=web`` does not
            make another container's events match a ``container=web`` filter.
        now_ns: the time to report when neither the envelope nor the exit carries one;
            defaults to the current time.
    """
    info = event.info
    attrs = dict(attributes or {})
    attrs["name"] = info.container_id
    is_exec = info.process_id not in ("", info.container_id)
    if event.type is EventType.EXIT:
        action = EventAction.EXEC_DIE if is_exec else EventAction.DIE
        attrs["exitCode"] = str(info.exit_code)
    else:
        action = _ACTIONS[event.type]
    if is_exec:
        attrs["execID"] = info.process_id
    if info.pid:
        attrs["pid"] = str(info.pid)
    when = event.timestamp or info.exited_at
    nanos = _unix_nanos(when) if when is not None else now_ns
    if nanos is None:
        nanos = time.time_ns()
    return EventMessage(
        action=action,
        actor=EventActor(id=info.container_id, attributes=attrs),
        time=nanos // 10**9,
        time_nano=nanos,
        topic=event.topic,
        namespace=event.namespace,
    )


def event_notification(subscription: str, message: EventMessage) -> bytes:
    """The ``event`` notification sent for one subscription."""
    return encode_notification("event", {"subscription": subscription, "event": message})


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Docker's event filter semantics.

    Different keys must all match. Several ``container`` values (id, or the ``name``
    attribute, which :func:`event_message` sets to the id) or ``event`` values (action)
    match if any one does; several ``label`` values must *all* match, as in Docker
    (``key`` means the attribute exists, ``key=value`` means it has that value). An empty
    filter matches everything.
    """

    containers: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def from_params(cls, filters: EventFilters | None) -> EventFilter:
        if filters is None:
            return cls()
        labels: list[tuple[str, str | None]] = []
        for entry in filters.label:
            key, sep, value = entry.partition("=")
            labels.append((key, value if sep else None))
        return cls(
            containers=frozenset(filters.container),
            actions=frozenset(str(action) for action in filters.event),
            labels=tuple(labels),
        )

    def matches(self, message: EventMessage) -> bool:
        attributes = message.actor.attributes
        if self.containers and not (
            message.actor.id in self.containers or attributes.get("name") in self.containers
        ):
            return False
        if self.actions and message.action not in self.actions:
            return False
        for key, value in self.labels:
            found = attributes.get(key)
            if found is None or (value is not None and found != value):
                return False
        return True
