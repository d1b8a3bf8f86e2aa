"""containerd-actors: a Trio actor system that drives containerd at the minimum RPC count.

Start with :func:`open_client`; see README.md for a walk-through.
"""

from ._client import Client as Client
from ._client import ClientStatistics as ClientStatistics
from ._client import RuncOptions as RuncOptions
from ._client import default_state_dir as default_state_dir
from ._client import open_client as open_client
from ._container import ActorStatistics as ActorStatistics
from ._container import Backend as Backend
from ._container import ProcessState as ProcessState
from ._container import TaskStatus as TaskStatus
from ._delivery import DeliveryStatistics as DeliveryStatistics
from ._embedded import PrivateContainerd as PrivateContainerd
from ._embedded import build_busybox_rootfs as build_busybox_rootfs
from ._handles import Container as Container
from ._handles import Process as Process
from ._handles import Task as Task
from ._remote import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from ._subscribers import EventStreamLagged as EventStreamLagged
from ._subscribers import Subscription as Subscription
from ._supervision import RestartLimitExceeded as RestartLimitExceeded
from ._supervision import RestartPolicy as RestartPolicy
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
from .events import INIT_PROCESS_NAME as INIT_PROCESS_NAME
from .events import EventInfo as EventInfo
from .events import EventType as EventType
from .events import ExitStatus as ExitStatus
from .events import TaskEvent as TaskEvent
from .spec import Spec as Spec
from .spec import build_process as build_process
from .spec import build_spec as build_spec
from .stdio import DirectIO as DirectIO

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
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PrivateContainerd",
    "Process",
    "ProcessState",
    "RemoteCancelled",
    "ResourceExhausted",
    "RestartLimitExceeded",
    "RestartPolicy",
    "RuncOptions",
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
    "default_state_dir",
    "open_client",
]
