"""One error hierarchy for everything the library raises.

containerd reports failures as gRPC status codes (its ``errdefs`` classes). We mirror those
classes one to one, so a caller catches :class:`NotFound` whether containerd said it or our
actor decided it locally (e.g. deleting a container whose task is still alive). The mapping
from grpclib's exceptions lives in exactly one place, :func:`from_grpc_exception`.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from typing import Final

from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

__all__ = [
    "Aborted",
    "ActorCrashed",
    "AlreadyExists",
    "ClientClosed",
    "ContainerdActorsError",
    "ContainerdError",
    "DataLoss",
    "DeadlineExceeded",
    "ErrorClass",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "RemoteCancelled",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_error_class",
    "from_grpc_exception",
]


class ErrorClass(enum.StrEnum):
    """containerd's error classes, named as gRPC names them (the JSON-RPC gateway sends these)."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class ContainerdActorsError(Exception):
    """Base of every exception this library raises on purpose."""


class ContainerdError(ContainerdActorsError):
    """A failure with one of containerd's error classes.

    Attributes:
        error_class: the class, e.g. ``ErrorClass.NOT_FOUND``.
        grpc_code: the numeric gRPC status code of that class.
        local: True when the library decided it without asking containerd.
    """

    error_class: ErrorClass = ErrorClass.UNKNOWN

    def __init__(self, message: str, *, local: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.local = local

    @property
    def grpc_code(self) -> int:
        return int(Status[self.error_class.value].value)


class RemoteCancelled(ContainerdError):
    """containerd cancelled the call (not a Trio cancellation, which stays ``trio.Cancelled``)."""

    error_class = ErrorClass.CANCELLED


class Unknown(ContainerdError):
    error_class = ErrorClass.UNKNOWN


class InvalidArgument(ContainerdError):
    error_class = ErrorClass.INVALID_ARGUMENT


class DeadlineExceeded(ContainerdError):
    error_class = ErrorClass.DEADLINE_EXCEEDED


class NotFound(ContainerdError):
    error_class = ErrorClass.NOT_FOUND


class AlreadyExists(ContainerdError):
    error_class = ErrorClass.ALREADY_EXISTS


class PermissionDenied(ContainerdError):
    error_class = ErrorClass.PERMISSION_DENIED


class ResourceExhausted(ContainerdError):
    error_class = ErrorClass.RESOURCE_EXHAUSTED


class FailedPrecondition(ContainerdError):
    error_class = ErrorClass.FAILED_PRECONDITION


class Aborted(ContainerdError):
    error_class = ErrorClass.ABORTED


class OutOfRange(ContainerdError):
    error_class = ErrorClass.OUT_OF_RANGE


class Unimplemented(ContainerdError):
    error_class = ErrorClass.UNIMPLEMENTED


class Internal(ContainerdError):
    error_class = ErrorClass.INTERNAL


class Unavailable(ContainerdError):
    """containerd cannot be reached, or the connection broke mid-call."""

    error_class = ErrorClass.UNAVAILABLE


class DataLoss(ContainerdError):
    error_class = ErrorClass.DATA_LOSS


class Unauthenticated(ContainerdError):
    error_class = ErrorClass.UNAUTHENTICATED


class ActorCrashed(ContainerdActorsError):
    """The actor that owned the container failed while your call was pending.

    The container itself is untouched; the supervisor rebuilds the actor from containerd's
    state, so retrying the call is safe.
    """


class ClientClosed(ContainerdActorsError):
    """The client (or the actor behind a handle) has been closed; open a new one."""


_CLASS_BY_STATUS: dict[Status, type[ContainerdError]] = {
    cls_status: cls
    for cls in (
        RemoteCancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
    for cls_status in (Status[cls.error_class.value],)
}


#: runc/shim texts that containerd passes on as UNKNOWN but that mean "the process is not
#: in a state for this" (e.g. an exec racing the init's exit).
_STATE_TEXTS: Final = (
    "cannot exec in a stopped container",
    "container not running",
    "process already finished",
)


def from_grpc_exception(exc: BaseException, *, method: str = "") -> ContainerdError | None:
    """Translate an exception raised by grpclib or its transport into our hierarchy.

    Returns None for exceptions that are not transport or status failures (programming
    errors must keep their own type). ``method`` names the RPC for the message.
    """
    where = f"{method}: " if method else ""
    if isinstance(exc, GRPCError):
        cls = _CLASS_BY_STATUS.get(exc.status, Unknown)
        message = exc.message or exc.status.name.lower()
        if cls is Unknown and any(text in message for text in _STATE_TEXTS):
            # runc's refusals reach us as UNKNOWN through the shim; they are preconditions.
            cls = FailedPrecondition
        return cls(f"{where}{message}")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return DeadlineExceeded(f"{where}deadline exceeded")
    if isinstance(exc, StreamTerminatedError | ConnectionError | ssl.SSLError):
        return Unavailable(f"{where}connection to containerd lost: {exc}")
    if isinstance(exc, ProtocolError):
        return Internal(f"{where}gRPC protocol error: {exc}")
    if isinstance(exc, FileNotFoundError):
        return Unavailable(f"{where}containerd socket not found: {exc.filename or exc}")
    if isinstance(exc, OSError):
        return Unavailable(f"{where}cannot reach containerd: {exc}")
    return None


_CLASS_BY_NAME: dict[ErrorClass, type[ContainerdError]] = {
    cls.error_class: cls for cls in _CLASS_BY_STATUS.values()
}


def from_error_class(error_class: ErrorClass, message: str) -> ContainerdError:
    """The exception for a class name received over the wire (the gateway's error data)."""
    return _CLASS_BY_NAME.get(error_class, Unknown)(message)
