"""The generated proto modules are fresh and carry containerd's wire facts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpclib.client
import pytest
from google.protobuf import any_pb2, empty_pb2

from actors.containerd.pb.containerd.cgroups.v1 import metrics_pb2 as cgroups_v1
from actors.containerd.pb.containerd.cgroups.v2 import metrics_pb2 as cgroups_v2
from actors.containerd.pb.containerd.events import task_pb2 as events
from actors.containerd.pb.containerd.runc.options import oci_pb2 as runc
from actors.containerd.pb.containerd.services.containers.v1 import containers_grpc, containers_pb2
from actors.containerd.pb.containerd.services.events.v1 import events_grpc, events_pb2
from actors.containerd.pb.containerd.services.tasks.v1 import tasks_grpc, tasks_pb2
from actors.containerd.pb.containerd.services.version.v1 import version_grpc, version_pb2
from actors.containerd.pb.containerd.types import descriptor_pb2, metrics_pb2, mount_pb2
from actors.containerd.pb.containerd.types.task import task_pb2
from actors.containerd.pb.grpc.health.v1 import health_grpc, health_pb2
from proto import generate

if TYPE_CHECKING:
    from google.protobuf.descriptor import ServiceDescriptor
    from google.protobuf.message import Message

ROOT = Path(__file__).resolve().parents[2]


def test_generated_files_are_fresh() -> None:
    diff = generate.check()
    assert diff.clean, f"stale={diff.stale} missing={diff.missing} extra={diff.extra}"


def test_check_cli_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "proto/generate.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


def test_create_task_request_bytes() -> None:
    msg = tasks_pb2.CreateTaskRequest(container_id="x", terminal=True)
    # field 1 (LEN): tag 0x0a, len 1, "x"; field 7 (VARINT): tag 0x38, value 1
    assert msg.SerializeToString() == b"\x0a\x01x\x38\x01"


def test_envelope_bytes() -> None:
    env = events_pb2.Envelope(
        namespace="ns",
        topic="/tasks/exit",
        event=any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\x0a\x01c"),
    )
    data = env.SerializeToString()
    assert data.startswith(b"\x12\x02ns\x1a\x0b/tasks/exit\x22")
    decoded = events.TaskExit.FromString(events_pb2.Envelope.FromString(data).event.value)
    assert decoded.container_id == "c"


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        (descriptor_pb2.Descriptor, "annotations", 5),
        (descriptor_pb2.Descriptor, "size", 3),
        (mount_pb2.Mount, "options", 4),
        (metrics_pb2.Metric, "data", 3),
        (task_pb2.Process, "exited_at", 10),
        (task_pb2.ProcessInfo, "info", 2),
        (containers_pb2.Container, "extensions", 10),
        (containers_pb2.Container, "sandbox", 11),
        (containers_pb2.Container.Runtime, "options", 2),
        (containers_pb2.UpdateContainerRequest, "update_mask", 2),
        (tasks_pb2.CreateTaskRequest, "rootfs", 3),
        (tasks_pb2.CreateTaskRequest, "checkpoint", 8),
        (tasks_pb2.CreateTaskRequest, "options", 9),
        (tasks_pb2.CreateTaskRequest, "runtime_path", 10),
        (tasks_pb2.ExecProcessRequest, "spec", 6),
        (tasks_pb2.ExecProcessRequest, "exec_id", 7),
        (tasks_pb2.KillRequest, "all", 4),
        (tasks_pb2.CheckpointTaskRequest, "options", 3),
        (tasks_pb2.UpdateTaskRequest, "annotations", 3),
        (tasks_pb2.DeleteResponse, "exited_at", 4),
        (tasks_pb2.WaitResponse, "exited_at", 2),
        (events_pb2.Envelope, "event", 4),
        (events_pb2.PublishRequest, "event", 2),
        (events.TaskCreate, "pid", 6),
        (events.TaskDelete, "id", 5),
        (events.TaskExit, "id", 2),
        (events.TaskExit, "exit_status", 4),
        (events.TaskExecStarted, "pid", 3),
        (runc.Options, "binary_name", 6),
        (runc.Options, "root", 7),
        (runc.Options, "systemd_cgroup", 9),
        (runc.CheckpointOptions, "image_path", 8),
        (runc.CheckpointOptions, "work_path", 9),
        (cgroups_v1.Metrics, "memory", 4),
        (cgroups_v1.MemoryStat, "usage", 33),
        (cgroups_v2.Metrics, "memory", 4),
        (cgroups_v2.Metrics, "memory_events", 8),
        (cgroups_v2.MemoryStat, "usage", 32),
        (version_pb2.VersionResponse, "revision", 2),
        (health_pb2.HealthCheckResponse, "status", 1),
    ],
)
def test_field_numbers(message: type[Message], field: str, number: int) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number


@pytest.mark.parametrize(
    ("message", "full_name"),
    [
        (events_pb2.Envelope, "containerd.services.events.v1.Envelope"),
        (events.TaskExit, "containerd.events.TaskExit"),
        (events.TaskOOM, "containerd.events.TaskOOM"),
        (runc.Options, "containerd.runc.v1.Options"),
        (runc.CheckpointOptions, "containerd.runc.v1.CheckpointOptions"),
        (runc.ProcessDetails, "containerd.runc.v1.ProcessDetails"),
        (cgroups_v1.Metrics, "io.containerd.cgroups.v1.Metrics"),
        (cgroups_v2.Metrics, "io.containerd.cgroups.v2.Metrics"),
        (task_pb2.Process, "containerd.v1.types.Process"),
        (mount_pb2.Mount, "containerd.types.Mount"),
    ],
)
def test_wire_names(message: type[Message], full_name: str) -> None:
    assert message.DESCRIPTOR.full_name == full_name


def test_status_enum() -> None:
    assert [(v.name, v.number) for v in task_pb2.Status.DESCRIPTOR.values] == [
        ("UNKNOWN", 0),
        ("CREATED", 1),
        ("RUNNING", 2),
        ("STOPPED", 3),
        ("PAUSED", 4),
        ("PAUSING", 5),
    ]


@dataclass(frozen=True)
class Stubs:
    tasks: tasks_grpc.TasksStub
    containers: containers_grpc.ContainersStub
    events: events_grpc.EventsStub
    version: version_grpc.VersionStub
    health: health_grpc.HealthStub


def _stubs() -> Stubs:
    async def build() -> Stubs:
        # Channel() looks up the event loop, so create it inside one; it never connects.
        channel = grpclib.client.Channel(path="/nonexistent")
        try:
            return Stubs(
                tasks_grpc.TasksStub(channel),
                containers_grpc.ContainersStub(channel),
                events_grpc.EventsStub(channel),
                version_grpc.VersionStub(channel),
                health_grpc.HealthStub(channel),
            )
        finally:
            channel.close()

    return asyncio.run(build())


def test_stub_paths_and_types() -> None:
    stubs = _stubs()
    create = stubs.tasks.Create
    assert isinstance(create, grpclib.client.UnaryUnaryMethod)
    assert create.name == "/containerd.services.tasks.v1.Tasks/Create"
    assert create.request_type is tasks_pb2.CreateTaskRequest
    assert create.reply_type is tasks_pb2.CreateTaskResponse
    assert stubs.tasks.Kill.reply_type is empty_pb2.Empty
    assert stubs.tasks.DeleteProcess.name == "/containerd.services.tasks.v1.Tasks/DeleteProcess"
    assert stubs.tasks.Wait.name == "/containerd.services.tasks.v1.Tasks/Wait"

    subscribe = stubs.events.Subscribe
    assert isinstance(subscribe, grpclib.client.UnaryStreamMethod)
    assert subscribe.name == "/containerd.services.events.v1.Events/Subscribe"
    assert subscribe.reply_type is events_pb2.Envelope

    assert stubs.containers.Get.name == "/containerd.services.containers.v1.Containers/Get"
    assert stubs.version.Version.name == "/containerd.services.version.v1.Version/Version"
    assert stubs.version.Version.request_type is empty_pb2.Empty
    assert stubs.health.Check.name == "/grpc.health.v1.Health/Check"


def test_only_subscribe_and_watch_stream() -> None:
    stubs = _stubs()
    methods = [m for stub in vars(stubs).values() for m in vars(stub).values()]
    assert all(isinstance(m, grpclib.client.ServiceMethod) for m in methods)
    assert len(methods) == 17 + 5 + 3 + 1 + 2
    streaming = {m.name for m in methods if not isinstance(m, grpclib.client.UnaryUnaryMethod)}
    assert streaming == {
        "/containerd.services.events.v1.Events/Subscribe",
        "/grpc.health.v1.Health/Watch",
    }
    for m in methods:
        if m.name in streaming:
            assert isinstance(m, grpclib.client.UnaryStreamMethod)


TASKS_METHODS = [
    "Create", "Start", "Delete", "DeleteProcess", "Get", "List", "Kill", "Exec", "ResizePty",
    "CloseIO", "Pause", "Resume", "ListPids", "Checkpoint", "Update", "Metrics", "Wait",
]  # fmt: skip


@pytest.mark.parametrize(
    ("base", "service", "names"),
    [
        (tasks_grpc.TasksBase, tasks_pb2.DESCRIPTOR.services_by_name["Tasks"], TASKS_METHODS),
        (
            containers_grpc.ContainersBase,
            containers_pb2.DESCRIPTOR.services_by_name["Containers"],
            ["Get", "List", "Create", "Update", "Delete"],
        ),
        (
            events_grpc.EventsBase,
            events_pb2.DESCRIPTOR.services_by_name["Events"],
            ["Publish", "Forward", "Subscribe"],
        ),
        (version_grpc.VersionBase, version_pb2.DESCRIPTOR.services_by_name["Version"], ["Version"]),
        (
            health_grpc.HealthBase,
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            ["Check", "Watch"],
        ),
    ],
)
def test_service_method_sets(base: type, service: ServiceDescriptor, names: list[str]) -> None:
    assert [m.name for m in service.methods] == names
    abstract = {n for n, v in vars(base).items() if getattr(v, "__isabstractmethod__", False)}
    assert abstract == set(names)
