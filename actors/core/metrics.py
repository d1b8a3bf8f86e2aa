"""Task statistics: typed views of ``Tasks.Metrics`` and ``Tasks.ListPids`` replies.

containerd answers ``Tasks.Metrics`` with ``containerd.types.Metric`` messages whose ``data``
is an ``Any`` holding the shim's cgroup statistics, either ``io.containerd.cgroups.v1.Metrics``
or ``io.containerd.cgroups.v2.Metrics`` depending on the host. :func:`decode_metric` folds both
layouts into one :class:`TaskStats` so callers never branch on the cgroup version; the few
counters that exist on one version only are documented on the field and read as zero (or
empty) on the other.

:func:`decode_process_info` does the same for one ``containerd.v1.types.ProcessInfo`` entry of
``Tasks.ListPids``. Both decoders are pure functions of the message.
"""

from __future__ import annotations

# msgspec resolves Struct annotations at runtime, so datetime must be importable here.
import datetime as dt
from typing import TYPE_CHECKING, Final

import msgspec
from google.protobuf.message import DecodeError

from actors.containerd.pb.containerd.cgroups.v1 import metrics_pb2 as v1_pb2
from actors.containerd.pb.containerd.cgroups.v2 import metrics_pb2 as v2_pb2
from actors.containerd.pb.containerd.runc.options import oci_pb2
from actors.containerd.pb.containerd.types import metrics_pb2 as types_metrics_pb2
from actors.containerd.pb.containerd.types.task import task_pb2

from .events import timestamp_to_datetime

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "CGROUP_V1_TYPE_URL",
    "CGROUP_V2_TYPE_URL",
    "PROCESS_DETAILS_TYPE_URL",
    "BlkioEntry",
    "BlkioStats",
    "CpuStats",
    "MemoryStats",
    "PidsStats",
    "ProcessSummary",
    "TaskStats",
    "decode_metric",
    "decode_process_info",
]

CGROUP_V1_TYPE_URL: Final = "io.containerd.cgroups.v1.Metrics"
CGROUP_V2_TYPE_URL: Final = "io.containerd.cgroups.v2.Metrics"
PROCESS_DETAILS_TYPE_URL: Final = "containerd.runc.v1.ProcessDetails"

# cgroup v2 reports CPU times in microseconds; TaskStats is in nanoseconds on both versions.
_NS_PER_USEC: Final = 1000


class CpuStats(msgspec.Struct, frozen=True, kw_only=True):
    """CPU accounting, in nanoseconds on both cgroup versions.

    Attributes:
        usage_total_ns: total CPU time (v1 ``cpuacct.usage``; v2 ``usage_usec``).
        usage_user_ns: user-mode CPU time (v1 ``usage.user``; v2 ``user_usec``).
        usage_kernel_ns: kernel-mode CPU time (v1 ``usage.kernel``; v2 ``system_usec``).
        per_cpu_ns: total CPU time per CPU (v1 ``cpuacct.usage_percpu``); empty on v2,
            which has no per-CPU counter.
        throttled_periods: CFS periods in which the cgroup was throttled (v2 ``nr_throttled``).
        throttled_time_ns: total time spent throttled (v2 ``throttled_usec``).
        periods: CFS enforcement periods elapsed (v2 ``nr_periods``).
    """

    usage_total_ns: int = 0
    usage_user_ns: int = 0
    usage_kernel_ns: int = 0
    per_cpu_ns: tuple[int, ...] = ()
    throttled_periods: int = 0
    throttled_time_ns: int = 0
    periods: int = 0


class MemoryStats(msgspec.Struct, frozen=True, kw_only=True):
    """Memory accounting, in bytes unless stated otherwise.

    Limits are passed through as the kernel reports them: "no limit" is a huge sentinel
    (about 2**63 on v1, 2**64 - 1 on v2), not zero.

    Attributes:
        usage_bytes: current usage (v1 ``memory.usage_in_bytes``; v2 ``memory.current``).
        limit_bytes: the memory limit (v1 ``memory.limit_in_bytes``; v2 ``memory.max``).
        max_usage_bytes: peak usage (v1 ``memory.max_usage_in_bytes``; v2 ``max_usage``,
            which only newer shims fill in, so it may be 0).
        cache_bytes: page cache (v1 ``total_cache``, falling back to ``cache`` when the
            hierarchical counter is 0; v2 ``file``).
        rss_bytes: anonymous memory (v1 ``total_rss``, falling back to ``rss``; v2 ``anon``).
        swap_usage_bytes: swap in use. v1 only reports memory+swap (``memsw``), so this is
            ``memsw.usage - memory.usage`` clamped at 0 (0 when swap accounting is off);
            v2 ``memory.swap.current``.
        oom_events: processes killed by the OOM killer (v1 ``memory.oom_control`` ``oom_kill``,
            kernels 4.13+; v2 ``memory.events`` ``oom_kill``). v1 ``under_oom`` is a 0/1 state,
            not a count, so it is not used.
        failcnt: times usage hit the limit (v1 ``memory.failcnt``); 0 on v2, which has no
            such counter.
    """

    usage_bytes: int = 0
    limit_bytes: int = 0
    max_usage_bytes: int = 0
    cache_bytes: int = 0
    rss_bytes: int = 0
    swap_usage_bytes: int = 0
    oom_events: int = 0
    failcnt: int = 0


class PidsStats(msgspec.Struct, frozen=True, kw_only=True):
    """Process counts of the cgroup's pids controller.

    Attributes:
        current: tasks currently in the cgroup.
        limit: ``pids.max`` as containerd reports it; 0 when there is no limit.
    """

    current: int = 0
    limit: int = 0


class BlkioEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One block-device counter.

    Attributes:
        op: lower-case operation: ``read``, ``write`` and, on v1 only, ``sync``, ``async``,
            ``discard`` and ``total`` (v1 prints them capitalised; they are lower-cased so
            both versions use the same names).
        major: device major number.
        minor: device minor number.
        value: bytes or operation count, depending on the tuple holding the entry.
    """

    op: str
    major: int
    minor: int
    value: int


class BlkioStats(msgspec.Struct, frozen=True, kw_only=True):
    """Block I/O counters, one entry per device and operation.

    Attributes:
        entries: bytes transferred (v1 ``io_service_bytes_recursive``; v2 ``rbytes`` and
            ``wbytes`` as ops ``read`` and ``write``).
        serviced: operations completed (v1 ``io_serviced_recursive``; v2 ``rios`` and
            ``wios`` as ops ``read`` and ``write``).
    """

    entries: tuple[BlkioEntry, ...] = ()
    serviced: tuple[BlkioEntry, ...] = ()


class TaskStats(msgspec.Struct, frozen=True, kw_only=True):
    """One decoded ``Tasks.Metrics`` sample, independent of the host's cgroup version.

    Attributes:
        read: when the shim sampled the counters (aware UTC), None when not set.
        cgroup_version: 1 or 2, from the payload's type URL.
        cpu: CPU accounting.
        memory: memory accounting.
        pids: pids controller counters.
        blkio: block I/O counters.
        raw_type_url: the payload's type URL exactly as received.
    """

    read: dt.datetime | None
    cgroup_version: int
    cpu: CpuStats
    memory: MemoryStats
    pids: PidsStats
    blkio: BlkioStats
    raw_type_url: str


class ProcessSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One process of a task (a ``Tasks.ListPids`` entry).

    Attributes:
        pid: host pid.
        exec_id: the exec process id, or "" for processes that were not started by an exec
            (the init process and its descendants).
    """

    pid: int
    exec_id: str = ""


def _type_name(type_url: str) -> str:
    # Type URLs are bare names on containerd, but a ``host/`` prefix is legal in an Any.
    return type_url.rsplit("/", 1)[-1]


def _v1_blkio(entries: Iterable[v1_pb2.BlkIOEntry]) -> tuple[BlkioEntry, ...]:
    return tuple(
        BlkioEntry(op=e.op.lower(), major=e.major, minor=e.minor, value=e.value) for e in entries
    )


def _from_v1(m: v1_pb2.Metrics) -> tuple[CpuStats, MemoryStats, PidsStats, BlkioStats]:
    # Unset sub-messages read as their defaults, so an absent controller gives zeros.
    usage, throttle = m.cpu.usage, m.cpu.throttling
    cpu = CpuStats(
        usage_total_ns=usage.total,
        usage_user_ns=usage.user,
        usage_kernel_ns=usage.kernel,
        per_cpu_ns=tuple(usage.per_cpu),
        throttled_periods=throttle.throttled_periods,
        throttled_time_ns=throttle.throttled_time,
        periods=throttle.periods,
    )
    mem = m.memory
    memory = MemoryStats(
        usage_bytes=mem.usage.usage,
        limit_bytes=mem.usage.limit,
        max_usage_bytes=mem.usage.max,
        # total_* include descendant cgroups; the plain counters are all that a cgroup
        # without hierarchy accounting reports.
        cache_bytes=mem.total_cache or mem.cache,
        rss_bytes=mem.total_rss or mem.rss,
        swap_usage_bytes=max(0, mem.swap.usage - mem.usage.usage),
        oom_events=m.memory_oom_control.oom_kill,
        failcnt=mem.usage.failcnt,
    )
    pids = PidsStats(current=m.pids.current, limit=m.pids.limit)
    blkio = BlkioStats(
        entries=_v1_blkio(m.blkio.io_service_bytes_recursive),
        serviced=_v1_blkio(m.blkio.io_serviced_recursive),
    )
    return cpu, memory, pids, blkio


def _from_v2(m: v2_pb2.Metrics) -> tuple[CpuStats, MemoryStats, PidsStats, BlkioStats]:
    c = m.cpu
    cpu = CpuStats(
        usage_total_ns=c.usage_usec * _NS_PER_USEC,
        usage_user_ns=c.user_usec * _NS_PER_USEC,
        usage_kernel_ns=c.system_usec * _NS_PER_USEC,
        throttled_periods=c.nr_throttled,
        throttled_time_ns=c.throttled_usec * _NS_PER_USEC,
        periods=c.nr_periods,
    )
    mem = m.memory
    memory = MemoryStats(
        usage_bytes=mem.usage,
        limit_bytes=mem.usage_limit,
        max_usage_bytes=mem.max_usage,
        cache_bytes=mem.file,
        rss_bytes=mem.anon,
        swap_usage_bytes=mem.swap_usage,
        oom_events=m.memory_events.oom_kill,
    )
    pids = PidsStats(current=m.pids.current, limit=m.pids.limit)
    entries: list[BlkioEntry] = []
    serviced: list[BlkioEntry] = []
    for e in m.io.usage:
        entries.append(BlkioEntry(op="read", major=e.major, minor=e.minor, value=e.rbytes))
        entries.append(BlkioEntry(op="write", major=e.major, minor=e.minor, value=e.wbytes))
        serviced.append(BlkioEntry(op="read", major=e.major, minor=e.minor, value=e.rios))
        serviced.append(BlkioEntry(op="write", major=e.major, minor=e.minor, value=e.wios))
    return cpu, memory, pids, BlkioStats(entries=tuple(entries), serviced=tuple(serviced))


def decode_metric(metric: types_metrics_pb2.Metric) -> TaskStats:
    """Decode one ``containerd.types.Metric`` from ``Tasks.Metrics``.

    Args:
        metric: a ``containerd.types.Metric`` message.

    Returns:
        The sample as a :class:`TaskStats`; counters the shim left unset read as 0.

    Raises:
        ValueError: the payload's type URL is neither cgroup v1 nor v2 Metrics (including a
            metric with no payload), or the payload does not parse.
    """
    type_url: str = metric.data.type_url
    name = _type_name(type_url)
    payload: v1_pb2.Metrics | v2_pb2.Metrics
    if not type_url:
        raise ValueError(f"metric for {metric.id!r} carries no payload")
    if name == CGROUP_V1_TYPE_URL:
        version, payload = 1, v1_pb2.Metrics()
    elif name == CGROUP_V2_TYPE_URL:
        version, payload = 2, v2_pb2.Metrics()
    else:
        raise ValueError(
            f"unsupported metric payload type {type_url!r} for {metric.id!r}: expected "
            f"{CGROUP_V1_TYPE_URL} or {CGROUP_V2_TYPE_URL}"
        )
    try:
        payload.ParseFromString(metric.data.value)
    except DecodeError as exc:
        raise ValueError(f"undecodable {name} payload for {metric.id!r}: {exc}") from exc
    if isinstance(payload, v1_pb2.Metrics):
        cpu, memory, pids, blkio = _from_v1(payload)
    else:
        cpu, memory, pids, blkio = _from_v2(payload)
    return TaskStats(
        read=timestamp_to_datetime(int(metric.timestamp.seconds), int(metric.timestamp.nanos)),
        cgroup_version=version,
        cpu=cpu,
        memory=memory,
        pids=pids,
        blkio=blkio,
        raw_type_url=type_url,
    )


def decode_process_info(info: task_pb2.ProcessInfo) -> ProcessSummary:
    """Decode one ``containerd.v1.types.ProcessInfo`` from ``Tasks.ListPids``.

    The runc shim attaches ``containerd.runc.v1.ProcessDetails`` only to the pids of exec
    processes; any other payload (or none) means the process is not an exec.

    Args:
        info: a ``containerd.v1.types.ProcessInfo`` message.

    Returns:
        The pid and, for an exec process, its exec id.

    Raises:
        ValueError: the payload claims to be ProcessDetails but does not parse.
    """
    pid = int(info.pid)
    if _type_name(info.info.type_url) != PROCESS_DETAILS_TYPE_URL:
        return ProcessSummary(pid=pid)
    details = oci_pb2.ProcessDetails()
    try:
        details.ParseFromString(info.info.value)
    except DecodeError as exc:
        raise ValueError(f"undecodable ProcessDetails payload for pid {pid}: {exc}") from exc
    return ProcessSummary(pid=pid, exec_id=details.exec_id)
