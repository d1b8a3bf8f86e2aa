"""Unit tests (no I/O): decoding Tasks.Metrics and Tasks.ListPids replies."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import msgspec
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.timestamp_pb2 import Timestamp

from actors.containerd.pb.containerd.cgroups.v1 import metrics_pb2 as v1_pb2
from actors.containerd.pb.containerd.cgroups.v2 import metrics_pb2 as v2_pb2
from actors.containerd.pb.containerd.runc.options import oci_pb2
from actors.containerd.pb.containerd.types import metrics_pb2
from actors.containerd.pb.containerd.types.task import task_pb2
from actors.core.metrics import (
    CGROUP_V1_TYPE_URL,
    CGROUP_V2_TYPE_URL,
    PROCESS_DETAILS_TYPE_URL,
    BlkioEntry,
    BlkioStats,
    CpuStats,
    MemoryStats,
    PidsStats,
    ProcessSummary,
    decode_metric,
    decode_process_info,
)

if TYPE_CHECKING:
    from google.protobuf.message import Message

# 2024-05-06T07:08:09.123456789Z
_SECONDS = 1714979289
_NANOS = 123_456_789
_WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


def _metric(
    type_url: str, payload: Message | bytes, *, timestamp: Timestamp | None = None
) -> metrics_pb2.Metric:
    # A hand-built Any: Any.Pack would add the type.googleapis.com/ prefix containerd omits.
    value = payload if isinstance(payload, bytes) else payload.SerializeToString()
    metric = metrics_pb2.Metric(id="web", data=AnyPb(type_url=type_url, value=value))
    if timestamp is not None:
        metric.timestamp.CopyFrom(timestamp)
    return metric


def _v1_metrics() -> v1_pb2.Metrics:
    return v1_pb2.Metrics(
        pids=v1_pb2.PidsStat(current=7, limit=4096),
        cpu=v1_pb2.CPUStat(
            usage=v1_pb2.CPUUsage(total=9_000, kernel=2_000, user=6_000, per_cpu=[5_000, 4_000]),
            throttling=v1_pb2.Throttle(periods=50, throttled_periods=3, throttled_time=1_234),
        ),
        memory=v1_pb2.MemoryStat(
            cache=11,
            rss=22,
            total_cache=111,
            total_rss=222,
            usage=v1_pb2.MemoryEntry(limit=1 << 30, usage=500, max=800, failcnt=4),
            swap=v1_pb2.MemoryEntry(limit=2 << 30, usage=650, max=900, failcnt=0),
        ),
        memory_oom_control=v1_pb2.MemoryOomControl(oom_kill_disable=0, under_oom=1, oom_kill=2),
        blkio=v1_pb2.BlkIOStat(
            io_service_bytes_recursive=[
                v1_pb2.BlkIOEntry(op="Read", device="/dev/sda", major=8, minor=0, value=4096),
                v1_pb2.BlkIOEntry(op="Write", device="/dev/sda", major=8, minor=0, value=512),
                v1_pb2.BlkIOEntry(op="Total", major=8, minor=0, value=4608),
            ],
            io_serviced_recursive=[
                v1_pb2.BlkIOEntry(op="Read", major=8, minor=0, value=3),
                v1_pb2.BlkIOEntry(op="Write", major=8, minor=0, value=1),
            ],
            io_queued_recursive=[v1_pb2.BlkIOEntry(op="Read", major=8, minor=0, value=99)],
        ),
    )


def _v2_metrics() -> v2_pb2.Metrics:
    return v2_pb2.Metrics(
        pids=v2_pb2.PidsStat(current=3, limit=100),
        cpu=v2_pb2.CPUStat(
            usage_usec=1_500,
            user_usec=1_000,
            system_usec=500,
            nr_periods=40,
            nr_throttled=2,
            throttled_usec=250,
        ),
        memory=v2_pb2.MemoryStat(
            anon=300,
            file=700,
            usage=1_200,
            usage_limit=(1 << 64) - 1,
            swap_usage=64,
            swap_limit=1 << 20,
            max_usage=1_500,
        ),
        memory_events=v2_pb2.MemoryEvents(oom=5, oom_kill=4, max=9),
        io=v2_pb2.IOStat(
            usage=[
                v2_pb2.IOEntry(major=8, minor=0, rbytes=4096, wbytes=1024, rios=4, wios=2),
                v2_pb2.IOEntry(major=253, minor=1, rbytes=10, wbytes=0, rios=1, wios=0),
            ]
        ),
    )


def test_v1_field_mapping() -> None:
    ts = Timestamp(seconds=_SECONDS, nanos=_NANOS)
    stats = decode_metric(_metric(CGROUP_V1_TYPE_URL, _v1_metrics(), timestamp=ts))

    assert stats.cgroup_version == 1
    assert stats.raw_type_url == CGROUP_V1_TYPE_URL
    assert stats.read == _WHEN
    assert stats.read is not None
    assert stats.read.utcoffset() == dt.timedelta(0)
    assert stats.cpu == CpuStats(
        usage_total_ns=9_000,
        usage_user_ns=6_000,
        usage_kernel_ns=2_000,
        per_cpu_ns=(5_000, 4_000),
        throttled_periods=3,
        throttled_time_ns=1_234,
        periods=50,
    )
    assert isinstance(stats.cpu.per_cpu_ns, tuple)
    assert stats.memory == MemoryStats(
        usage_bytes=500,
        limit_bytes=1 << 30,
        max_usage_bytes=800,
        cache_bytes=111,  # total_cache wins over cache
        rss_bytes=222,  # total_rss wins over rss
        swap_usage_bytes=150,  # memsw usage minus memory usage
        oom_events=2,  # oom_kill, not the under_oom flag
        failcnt=4,
    )
    assert stats.pids == PidsStats(current=7, limit=4096)
    assert stats.blkio == BlkioStats(
        entries=(
            BlkioEntry(op="read", major=8, minor=0, value=4096),
            BlkioEntry(op="write", major=8, minor=0, value=512),
            BlkioEntry(op="total", major=8, minor=0, value=4608),
        ),
        serviced=(
            BlkioEntry(op="read", major=8, minor=0, value=3),
            BlkioEntry(op="write", major=8, minor=0, value=1),
        ),
    )


def test_v1_falls_back_to_non_hierarchical_memory_counters() -> None:
    payload = v1_pb2.Metrics(memory=v1_pb2.MemoryStat(cache=11, rss=22))
    memory = decode_metric(_metric(CGROUP_V1_TYPE_URL, payload)).memory
    assert (memory.cache_bytes, memory.rss_bytes) == (11, 22)


def test_v1_swap_without_swap_accounting_is_zero() -> None:
    # With swap accounting off the memsw entry is all zeros, below the memory usage.
    payload = v1_pb2.Metrics(memory=v1_pb2.MemoryStat(usage=v1_pb2.MemoryEntry(usage=500)))
    assert decode_metric(_metric(CGROUP_V1_TYPE_URL, payload)).memory.swap_usage_bytes == 0


def test_v2_field_mapping() -> None:
    ts = Timestamp(seconds=_SECONDS, nanos=_NANOS)
    stats = decode_metric(_metric(CGROUP_V2_TYPE_URL, _v2_metrics(), timestamp=ts))

    assert stats.cgroup_version == 2
    assert stats.raw_type_url == CGROUP_V2_TYPE_URL
    assert stats.read == _WHEN
    assert stats.cpu == CpuStats(
        usage_total_ns=1_500_000,
        usage_user_ns=1_000_000,
        usage_kernel_ns=500_000,
        per_cpu_ns=(),
        throttled_periods=2,
        throttled_time_ns=250_000,
        periods=40,
    )
    assert stats.memory == MemoryStats(
        usage_bytes=1_200,
        limit_bytes=(1 << 64) - 1,
        max_usage_bytes=1_500,
        cache_bytes=700,
        rss_bytes=300,
        swap_usage_bytes=64,
        oom_events=4,
        failcnt=0,
    )
    assert stats.pids == PidsStats(current=3, limit=100)
    assert stats.blkio == BlkioStats(
        entries=(
            BlkioEntry(op="read", major=8, minor=0, value=4096),
            BlkioEntry(op="write", major=8, minor=0, value=1024),
            BlkioEntry(op="read", major=253, minor=1, value=10),
            BlkioEntry(op="write", major=253, minor=1, value=0),
        ),
        serviced=(
            BlkioEntry(op="read", major=8, minor=0, value=4),
            BlkioEntry(op="write", major=8, minor=0, value=2),
            BlkioEntry(op="read", major=253, minor=1, value=1),
            BlkioEntry(op="write", major=253, minor=1, value=0),
        ),
    )


@pytest.mark.parametrize(
    ("type_url", "version"),
    [(CGROUP_V1_TYPE_URL, 1), (CGROUP_V2_TYPE_URL, 2)],
)
def test_empty_payload_gives_zeros(type_url: str, version: int) -> None:
    stats = decode_metric(_metric(type_url, b""))
    assert stats.cgroup_version == version
    assert stats.read is None
    assert stats.cpu == CpuStats()
    assert stats.memory == MemoryStats()
    assert stats.pids == PidsStats()
    assert stats.blkio == BlkioStats()
    assert stats.cpu.per_cpu_ns == ()
    assert stats.blkio.entries == ()


def test_sub_messages_set_to_defaults_give_zeros() -> None:
    # Present-but-empty sub-messages are encoded, unlike absent ones; both must read as 0.
    payload = v2_pb2.Metrics(
        cpu=v2_pb2.CPUStat(), memory=v2_pb2.MemoryStat(), memory_events=v2_pb2.MemoryEvents()
    )
    assert payload.HasField("cpu")
    stats = decode_metric(_metric(CGROUP_V2_TYPE_URL, payload))
    assert (stats.cpu, stats.memory) == (CpuStats(), MemoryStats())


@pytest.mark.parametrize("prefix", ["host/", "type.googleapis.com/", "a/b/"])
def test_prefixed_type_url_is_accepted_and_kept_raw(prefix: str) -> None:
    url = prefix + CGROUP_V2_TYPE_URL
    stats = decode_metric(_metric(url, _v2_metrics()))
    assert stats.cgroup_version == 2
    assert stats.raw_type_url == url
    assert stats.memory.rss_bytes == 300


def test_timestamp_is_truncated_to_microseconds() -> None:
    ts = Timestamp(seconds=_SECONDS, nanos=999)
    stats = decode_metric(_metric(CGROUP_V1_TYPE_URL, b"", timestamp=ts))
    assert stats.read == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "type_url",
    [
        "io.containerd.cgroups.v3.Metrics",
        "io.containerd.cgroups.v1.Metrics/",
        "containerd.types.Metric",
        "io.containerd.cgroups.v1.metrics",
    ],
)
def test_unknown_type_url_raises(type_url: str) -> None:
    with pytest.raises(ValueError, match="unsupported metric payload type") as info:
        decode_metric(_metric(type_url, _v1_metrics()))
    assert repr(type_url) in str(info.value)
    assert "'web'" in str(info.value)


def test_metric_without_payload_raises() -> None:
    with pytest.raises(ValueError, match="carries no payload"):
        decode_metric(metrics_pb2.Metric(id="web"))


@pytest.mark.parametrize("type_url", [CGROUP_V1_TYPE_URL, CGROUP_V2_TYPE_URL])
def test_garbage_payload_raises(type_url: str) -> None:
    with pytest.raises(ValueError, match="undecodable") as info:
        decode_metric(_metric(type_url, b"\xff\xff\xff\xff"))
    assert isinstance(info.value.__cause__, Exception)


def test_stats_are_frozen_structs() -> None:
    stats = decode_metric(_metric(CGROUP_V1_TYPE_URL, _v1_metrics()))
    with pytest.raises(AttributeError):
        stats.cpu.periods = 0  # type: ignore[misc]
    assert hash(stats.blkio.entries[0]) == hash(BlkioEntry(op="read", major=8, minor=0, value=4096))
    # They round-trip through msgspec, which is how callers ship them elsewhere.
    encoded = msgspec.json.encode(stats)
    assert msgspec.json.decode(encoded, type=type(stats)) == stats


def test_process_details_give_exec_id() -> None:
    details = oci_pb2.ProcessDetails(exec_id="shell-1")
    info = task_pb2.ProcessInfo(
        pid=4321, info=AnyPb(type_url=PROCESS_DETAILS_TYPE_URL, value=details.SerializeToString())
    )
    assert decode_process_info(info) == ProcessSummary(pid=4321, exec_id="shell-1")


def test_prefixed_process_details_type_url() -> None:
    details = oci_pb2.ProcessDetails(exec_id="x")
    url = "host/" + PROCESS_DETAILS_TYPE_URL
    info = task_pb2.ProcessInfo(pid=1, info=AnyPb(type_url=url, value=details.SerializeToString()))
    assert decode_process_info(info).exec_id == "x"


def test_process_without_details_has_empty_exec_id() -> None:
    assert decode_process_info(task_pb2.ProcessInfo(pid=17)) == ProcessSummary(pid=17, exec_id="")
    empty_any = task_pb2.ProcessInfo(pid=18, info=AnyPb())
    assert decode_process_info(empty_any) == ProcessSummary(pid=18, exec_id="")


def test_other_payload_type_is_not_an_exec() -> None:
    # Only ProcessDetails carries an exec id; bytes under another type are not read.
    details = oci_pb2.ProcessDetails(exec_id="nope")
    info = task_pb2.ProcessInfo(
        pid=5, info=AnyPb(type_url="containerd.runc.v1.Other", value=details.SerializeToString())
    )
    assert decode_process_info(info) == ProcessSummary(pid=5)


def test_garbage_process_details_raise() -> None:
    info = task_pb2.ProcessInfo(
        pid=9, info=AnyPb(type_url=PROCESS_DETAILS_TYPE_URL, value=b"\xff\xff")
    )
    with pytest.raises(ValueError, match="undecodable ProcessDetails payload for pid 9"):
        decode_process_info(info)


def test_type_url_constants_match_the_generated_protos() -> None:
    assert v1_pb2.Metrics.DESCRIPTOR.full_name == CGROUP_V1_TYPE_URL
    assert v2_pb2.Metrics.DESCRIPTOR.full_name == CGROUP_V2_TYPE_URL
    assert oci_pb2.ProcessDetails.DESCRIPTOR.full_name == PROCESS_DETAILS_TYPE_URL
