"""What the control plane keeps about a container beyond containerd's record, for docker's verbs.

Docker shows when a container was created, from what, its command and stop signal, and
removes ``--rm`` containers itself when they exit. containerd's record has none of that, so
the gateway stores it at create time in internal labels (under
:data:`~actors.control._labels.INTERNAL_LABEL_PREFIX`, which clients can neither set nor see)
and derives the rest from the spec and the kernel (``/proc``) when asked.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import re
import signal as signal_module
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..core.spec import decode_spec
from ..errors import InvalidArgument
from ._labels import INTERNAL_LABEL_PREFIX
from ._protocol import parse_signal

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..core._handles import Container
    from ..images._api import Image
    from ._protocol import ContainerCreateParams, EventFilter, EventMessage

__all__ = [
    "AUTO_REMOVE_LABEL",
    "CREATED_LABEL",
    "IMAGE_LABEL",
    "STOP_SIGNAL_LABEL",
    "VOLUMES_LABEL",
    "EventLog",
    "auto_remove",
    "default_hostname",
    "describe_extra",
    "image_stop_signal",
    "image_volumes",
    "lifecycle_labels",
    "read_top",
    "stop_signal",
]

CREATED_LABEL: Final = INTERNAL_LABEL_PREFIX + "created"
IMAGE_LABEL: Final = INTERNAL_LABEL_PREFIX + "image"
AUTO_REMOVE_LABEL: Final = INTERNAL_LABEL_PREFIX + "auto-remove"
STOP_SIGNAL_LABEL: Final = INTERNAL_LABEL_PREFIX + "stop-signal"
# The image's Volumes: no volume is made for them; the paths stay in the container's own
# writable snapshot (removed with the container, like docker's anonymous volumes with --rm).
VOLUMES_LABEL: Final = INTERNAL_LABEL_PREFIX + "volumes"
_LABEL_VALUE_MAX: Final = 3500
DEFAULT_IMAGE_NAME: Final = "busybox"
DEFAULT_STOP_TIMEOUT: Final = 10
EVENT_LOG_SIZE: Final = 1024

_NOT_HOSTNAME: Final = re.compile(r"[^A-Za-z0-9-]+")


def rfc3339(when: dt.datetime) -> str:
    """UTC, nanosecond-free RFC 3339 with a ``Z`` suffix (docker's own format, seconds part)."""
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def lifecycle_labels(
    params: ContainerCreateParams, signo: int | None, now: dt.datetime | None = None
) -> dict[str, str]:
    """The internal labels a ``container.create`` stores next to the client's labels."""
    labels = {
        CREATED_LABEL: rfc3339(now or dt.datetime.now(dt.UTC)),
        # The rootfs as the client named it: the default's host path is the operator's.
        IMAGE_LABEL: params.rootfs or DEFAULT_IMAGE_NAME,
    }
    if params.auto_remove:
        labels[AUTO_REMOVE_LABEL] = "true"
    if signo is not None:
        labels[STOP_SIGNAL_LABEL] = str(signo)
    return labels


def default_hostname(container_id: str) -> str:
    """Docker names the host after the container's short id; ours are names, so the name.

    Characters a hostname may not hold become '-', and it is cut to the 63 a label allows.
    """
    name = _NOT_HOSTNAME.sub("-", container_id).strip("-")[:63].strip("-")
    return name or "container"


def auto_remove(labels: dict[str, str]) -> bool:
    return labels.get(AUTO_REMOVE_LABEL) == "true"


def image_stop_signal(image: Image) -> int | None:
    """The image config's StopSignal as a number (None when it sets none).

    Raises:
        InvalidArgument: the image names a signal that does not exist (docker refuses
            such an image at create too).
    """
    run = image.config.config
    text = run.stop_signal if run is not None else ""
    if not text:
        return None
    try:
        return parse_signal(text)
    except InvalidArgument:
        raise InvalidArgument(
            f"image {image.name}: invalid StopSignal {text[:32]!r} in its config", local=True
        ) from None


def image_volumes(image: Image) -> str | None:
    """The label value recording an image's Volumes (a JSON list of paths), or None."""
    run = image.config.config
    paths = sorted(run.volumes or {}) if run is not None else []
    kept: list[str] = []
    for path in paths:
        if len(msgspec.json.encode([*kept, path])) > _LABEL_VALUE_MAX:
            break  # a label is bounded; inspect then shows the first ones
        kept.append(path)
    return msgspec.json.encode(kept).decode() if kept else None


def volumes(labels: dict[str, str]) -> list[str]:
    try:
        found = msgspec.json.decode(labels.get(VOLUMES_LABEL, "[]"), type=list[str])
    except msgspec.DecodeError:
        return []
    return found


def stop_signal(labels: dict[str, str]) -> int:
    value = labels.get(STOP_SIGNAL_LABEL, "")
    return int(value) if value.isdigit() else int(signal_module.SIGTERM)


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or ')'.
    return text[text.rfind(")") + 2 :].split()


def started_at(pid: int) -> str | None:
    """When a host process started (RFC 3339), from /proc; None if it is gone."""
    fields = _proc_stat(pid)
    boot = _boot_time()
    if fields is None or boot is None or len(fields) < 20:
        return None
    ticks = int(fields[19])  # field 22 of stat(5), counted after the name
    seconds = boot + ticks / os.sysconf("SC_CLK_TCK")
    return rfc3339(dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=0))


def read_top(processes: Iterable[tuple[int, str]]) -> list[dict[str, Any]]:
    """``ps``-like rows (pid, ppid, uid, started, cmd, exec_id) for host pids of a task."""
    rows: list[dict[str, Any]] = []
    for pid, exec_id in processes:
        fields = _proc_stat(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().rstrip(b"\0").split(b"\0")
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue  # exited meanwhile
        rows.append(
            {
                "pid": pid,
                "ppid": int(fields[1]) if fields else 0,
                "uid": uid,
                "started": started_at(pid),
                "cmd": " ".join(a.decode(errors="replace") for a in argv)[:4096],
                "exec_id": exec_id,
            }
        )
    return rows


def describe_extra(container: Container) -> dict[str, Any]:
    """What ``inspect`` and ``ps`` show besides the id, labels and task: config and times."""
    labels = container.labels
    extra: dict[str, Any] = {
        "created": labels.get(CREATED_LABEL),
        "image": labels.get(IMAGE_LABEL) or container._record.image or "",
        "auto_remove": auto_remove(labels),
        "stop_signal": stop_signal(labels),
        "volumes": volumes(labels),
        "restart": msgspec.to_builtins(container.restart_status()),
    }
    try:
        spec = decode_spec(container.spec_json)
    except (msgspec.DecodeError, ValueError):
        return extra
    process = spec.process
    if process is not None:
        extra.update(
            args=list(process.args),
            env=list(process.env),
            cwd=process.cwd,
            user=f"{process.user.uid}:{process.user.gid}",
            terminal=bool(process.terminal),
        )
    extra["hostname"] = spec.hostname or ""
    linux = spec.linux
    resources = linux.resources if linux is not None else None
    memory = resources.memory if resources is not None else None
    pids = resources.pids if resources is not None else None
    extra["memory_limit"] = memory.limit if memory is not None and memory.limit else 0
    extra["pids_limit"] = pids.limit if pids is not None and pids.limit else 0
    state = container.task_state()
    if state is not None and state.pid and state.exit is None:
        extra["started"] = started_at(state.pid)
    return extra


class EventLog:
    """The last :data:`EVENT_LOG_SIZE` event messages, for ``events --since`` (docker keeps
    a similar ring); events older than the gateway are not known."""

    def __init__(self, size: int = EVENT_LOG_SIZE) -> None:
        self._messages: collections.deque[EventMessage] = collections.deque(maxlen=size)

    def append(self, message: EventMessage) -> None:
        self._messages.append(message)

    def since(self, since_ns: int, event_filter: EventFilter) -> list[EventMessage]:
        return [m for m in self._messages if m.time_nano >= since_ns and event_filter.matches(m)]
