"""containerd-actors: a Trio actor system that drives containerd at the minimum RPC count.

Start with :func:`open_client`; see README.md for a walk-through.

Names load on first use (PEP 562): the command-line client imports this package and
needs none of the daemon side, so ``containerd-actors ps`` does not pay for importing the
gRPC stubs, the registry client and the actors (about 0.3 s of CPU per command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .containerd._embedded import PrivateContainerd as PrivateContainerd
    from .containerd._embedded import build_busybox_rootfs as build_busybox_rootfs
    from .containerd._remote import DEFAULT_ADDRESS as DEFAULT_ADDRESS
    from .control._gateway_logs import LogManager as LogManager
    from .core._client import Client as Client
    from .core._client import ClientStatistics as ClientStatistics
    from .core._client import RuncOptions as RuncOptions
    from .core._client import default_state_dir as default_state_dir
    from .core._client import open_client as open_client
    from .core._container import ActorStatistics as ActorStatistics
    from .core._container import Backend as Backend
    from .core._container import ProcessState as ProcessState
    from .core._container import RestartStatus as RestartStatus
    from .core._container import TaskStatus as TaskStatus
    from .core._delivery import DeliveryStatistics as DeliveryStatistics
    from .core._handles import Container as Container
    from .core._handles import Process as Process
    from .core._handles import Task as Task
    from .core._image_spec import image_spec as image_spec
    from .core._logformat import LogRecord as LogRecord
    from .core._logstore import LogConfig as LogConfig
    from .core._logstore import LogReadOptions as LogReadOptions
    from .core._logstore import LogStore as LogStore
    from .core._restart import ContainerRestartPolicy as ContainerRestartPolicy
    from .core._seccomp import default_seccomp_profile as default_seccomp_profile
    from .core._shimgroups import ShimGroups as ShimGroups
    from .core._shimgroups import ShimGroupStatistics as ShimGroupStatistics
    from .core._subscribers import EventStreamLagged as EventStreamLagged
    from .core._subscribers import Subscription as Subscription
    from .core._supervision import RestartLimitExceeded as RestartLimitExceeded
    from .core._supervision import RestartPolicy as RestartPolicy
    from .core.events import INIT_PROCESS_NAME as INIT_PROCESS_NAME
    from .core.events import EventInfo as EventInfo
    from .core.events import EventType as EventType
    from .core.events import ExitStatus as ExitStatus
    from .core.events import TaskEvent as TaskEvent
    from .core.spec import Spec as Spec
    from .core.spec import build_process as build_process
    from .core.spec import build_spec as build_spec
    from .core.stdio import DirectIO as DirectIO
    from .core.stdio import OutputChunk as OutputChunk
    from .core.stdio import OutputMode as OutputMode
    from .core.stdio import OutputPipe as OutputPipe
    from .errors import Aborted as Aborted
    from .errors import ActorCrashed as ActorCrashed
    from .errors import AlreadyExists as AlreadyExists
    from .errors import ClientClosed as ClientClosed
    from .errors import ContainerdActorsError as ContainerdActorsError
    from .errors import ContainerdError as ContainerdError
    from .errors import DataLoss as DataLoss
    from .errors import DeadlineExceeded as DeadlineExceeded
    from .errors import ErrorClass as ErrorClass
    from .errors import FailedPrecondition as FailedPrecondition
    from .errors import Internal as Internal
    from .errors import InvalidArgument as InvalidArgument
    from .errors import NotFound as NotFound
    from .errors import OutOfRange as OutOfRange
    from .errors import PermissionDenied as PermissionDenied
    from .errors import RemoteCancelled as RemoteCancelled
    from .errors import ResourceExhausted as ResourceExhausted
    from .errors import Unauthenticated as Unauthenticated
    from .errors import Unavailable as Unavailable
    from .errors import Unimplemented as Unimplemented
    from .errors import Unknown as Unknown
    from .images._api import Image as Image
    from .images._api import Images as Images
    from .images._api import LayerProgress as LayerProgress
    from .images._api import PullProgress as PullProgress

# Where each public name lives: the one table both loading and the checks read.
_SOURCES: dict[str, str] = {
    "PrivateContainerd": ".containerd._embedded",
    "build_busybox_rootfs": ".containerd._embedded",
    "DEFAULT_ADDRESS": ".containerd._remote",
    "LogManager": ".control._gateway_logs",
    "Client": ".core._client",
    "ClientStatistics": ".core._client",
    "RuncOptions": ".core._client",
    "default_state_dir": ".core._client",
    "open_client": ".core._client",
    "ActorStatistics": ".core._container",
    "Backend": ".core._container",
    "ProcessState": ".core._container",
    "RestartStatus": ".core._container",
    "TaskStatus": ".core._container",
    "DeliveryStatistics": ".core._delivery",
    "Container": ".core._handles",
    "Process": ".core._handles",
    "Task": ".core._handles",
    "image_spec": ".core._image_spec",
    "LogRecord": ".core._logformat",
    "LogConfig": ".core._logstore",
    "LogReadOptions": ".core._logstore",
    "LogStore": ".core._logstore",
    "ContainerRestartPolicy": ".core._restart",
    "default_seccomp_profile": ".core._seccomp",
    "ShimGroups": ".core._shimgroups",
    "ShimGroupStatistics": ".core._shimgroups",
    "EventStreamLagged": ".core._subscribers",
    "Subscription": ".core._subscribers",
    "RestartLimitExceeded": ".core._supervision",
    "RestartPolicy": ".core._supervision",
    "INIT_PROCESS_NAME": ".core.events",
    "EventInfo": ".core.events",
    "EventType": ".core.events",
    "ExitStatus": ".core.events",
    "TaskEvent": ".core.events",
    "Spec": ".core.spec",
    "build_process": ".core.spec",
    "build_spec": ".core.spec",
    "DirectIO": ".core.stdio",
    "OutputChunk": ".core.stdio",
    "OutputMode": ".core.stdio",
    "OutputPipe": ".core.stdio",
    "Aborted": ".errors",
    "ActorCrashed": ".errors",
    "AlreadyExists": ".errors",
    "ClientClosed": ".errors",
    "ContainerdActorsError": ".errors",
    "ContainerdError": ".errors",
    "DataLoss": ".errors",
    "DeadlineExceeded": ".errors",
    "ErrorClass": ".errors",
    "FailedPrecondition": ".errors",
    "Internal": ".errors",
    "InvalidArgument": ".errors",
    "NotFound": ".errors",
    "OutOfRange": ".errors",
    "PermissionDenied": ".errors",
    "RemoteCancelled": ".errors",
    "ResourceExhausted": ".errors",
    "Unauthenticated": ".errors",
    "Unavailable": ".errors",
    "Unimplemented": ".errors",
    "Unknown": ".errors",
    "Image": ".images._api",
    "Images": ".images._api",
    "LayerProgress": ".images._api",
    "PullProgress": ".images._api",
}

__all__ = [
    "DEFAULT_ADDRESS",
    "INIT_PROCESS_NAME",
    "Aborted",
    "ActorCrashed",
    "ActorStatistics",
    "AlreadyExists",
    "Backend",
    "Client",
    "ClientClosed",
    "ClientStatistics",
    "Container",
    "ContainerRestartPolicy",
    "ContainerdActorsError",
    "ContainerdError",
    "DataLoss",
    "DeadlineExceeded",
    "DeliveryStatistics",
    "DirectIO",
    "ErrorClass",
    "EventInfo",
    "EventStreamLagged",
    "EventType",
    "ExitStatus",
    "FailedPrecondition",
    "Image",
    "Images",
    "Internal",
    "InvalidArgument",
    "LayerProgress",
    "LogConfig",
    "LogManager",
    "LogReadOptions",
    "LogRecord",
    "LogStore",
    "NotFound",
    "OutOfRange",
    "OutputChunk",
    "OutputMode",
    "OutputPipe",
    "PermissionDenied",
    "PrivateContainerd",
    "Process",
    "ProcessState",
    "PullProgress",
    "RemoteCancelled",
    "ResourceExhausted",
    "RestartLimitExceeded",
    "RestartPolicy",
    "RestartStatus",
    "RuncOptions",
    "ShimGroupStatistics",
    "ShimGroups",
    "Spec",
    "Subscription",
    "Task",
    "TaskEvent",
    "TaskStatus",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "build_busybox_rootfs",
    "build_process",
    "build_spec",
    "default_seccomp_profile",
    "default_state_dir",
    "image_spec",
    "open_client",
]


def __getattr__(name: str) -> object:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
