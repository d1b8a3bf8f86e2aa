"""The image-store protos (content, images, leases, snapshots, diff) carry containerd's wire facts."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpclib.client
import pytest
from google.protobuf import empty_pb2

from actors.images._pb import (
    content_grpc,
    content_pb2,
    diff_grpc,
    diff_pb2,
    images_grpc,
    images_pb2,
    leases_grpc,
    leases_pb2,
    snapshots_grpc,
    snapshots_pb2,
)

if TYPE_CHECKING:
    from google.protobuf.message import Message


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (content_pb2.Info, {"digest": 1, "size": 2, "created_at": 3, "updated_at": 4, "labels": 5}),
        (content_pb2.InfoRequest, {"digest": 1}),
        (content_pb2.UpdateRequest, {"info": 1, "update_mask": 2}),
        (content_pb2.ListContentRequest, {"filters": 1}),
        (content_pb2.ListContentResponse, {"info": 1}),
        (content_pb2.DeleteContentRequest, {"digest": 1}),
        (content_pb2.ReadContentRequest, {"digest": 1, "offset": 2, "size": 3}),
        (content_pb2.ReadContentResponse, {"offset": 1, "data": 2}),
        (
            content_pb2.Status,
            {"started_at": 1, "updated_at": 2, "ref": 3, "offset": 4, "total": 5, "expected": 6},
        ),
        (content_pb2.StatusRequest, {"ref": 1}),
        (content_pb2.ListStatusesResponse, {"statuses": 1}),
        (
            content_pb2.WriteContentRequest,
            {
                "action": 1, "ref": 2, "total": 3, "expected": 4, "offset": 5, "data": 6,
                "labels": 7,
            },
        ),
        (
            content_pb2.WriteContentResponse,
            {
                "action": 1, "started_at": 2, "updated_at": 3, "offset": 4, "total": 5,
                "digest": 6,
            },
        ),
        (content_pb2.AbortRequest, {"ref": 1}),
        (
            images_pb2.Image,
            {"name": 1, "labels": 2, "target": 3, "created_at": 7, "updated_at": 8},
        ),
        (images_pb2.GetImageRequest, {"name": 1}),
        (images_pb2.CreateImageRequest, {"image": 1}),
        (images_pb2.UpdateImageRequest, {"image": 1, "update_mask": 2}),
        (images_pb2.ListImagesRequest, {"filters": 1}),
        (images_pb2.ListImagesResponse, {"images": 1}),
        (images_pb2.DeleteImageRequest, {"name": 1, "sync": 2}),
        (leases_pb2.Lease, {"id": 1, "created_at": 2, "labels": 3}),
        (leases_pb2.CreateRequest, {"id": 1, "labels": 3}),
        (leases_pb2.DeleteRequest, {"id": 1, "sync": 2}),
        (leases_pb2.ListResponse, {"leases": 1}),
        (leases_pb2.Resource, {"id": 1, "type": 2}),
        (leases_pb2.AddResourceRequest, {"id": 1, "resource": 2}),
        (leases_pb2.ListResourcesResponse, {"resources": 1}),
        (
            snapshots_pb2.PrepareSnapshotRequest,
            {"snapshotter": 1, "key": 2, "parent": 3, "labels": 4},
        ),
        (snapshots_pb2.ViewSnapshotRequest, {"snapshotter": 1, "key": 2, "parent": 3, "labels": 4}),
        (snapshots_pb2.PrepareSnapshotResponse, {"mounts": 1}),
        (snapshots_pb2.MountsRequest, {"snapshotter": 1, "key": 2}),
        (snapshots_pb2.MountsResponse, {"mounts": 1}),
        (snapshots_pb2.RemoveSnapshotRequest, {"snapshotter": 1, "key": 2}),
        (
            snapshots_pb2.CommitSnapshotRequest,
            {"snapshotter": 1, "name": 2, "key": 3, "labels": 4},
        ),
        (snapshots_pb2.StatSnapshotRequest, {"snapshotter": 1, "key": 2}),
        (
            snapshots_pb2.Info,
            {"name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6},
        ),
        (snapshots_pb2.StatSnapshotResponse, {"info": 1}),
        (snapshots_pb2.UpdateSnapshotRequest, {"snapshotter": 1, "info": 2, "update_mask": 3}),
        (snapshots_pb2.ListSnapshotsRequest, {"snapshotter": 1, "filters": 2}),
        (snapshots_pb2.ListSnapshotsResponse, {"info": 1}),
        (snapshots_pb2.UsageResponse, {"size": 1, "inodes": 2}),
        (snapshots_pb2.CleanupRequest, {"snapshotter": 1}),
        (diff_pb2.ApplyRequest, {"diff": 1, "mounts": 2, "payloads": 3}),
        (diff_pb2.ApplyResponse, {"applied": 1}),
        (
            diff_pb2.DiffRequest,
            {"left": 1, "right": 2, "media_type": 3, "ref": 4, "labels": 5},
        ),
        (diff_pb2.DiffResponse, {"diff": 3}),
    ],
)  # fmt: skip
def test_field_numbers(message: type[Message], fields: dict[str, int]) -> None:
    # Every field pinned, and no field we did not pin.
    numbers = {f.name: f.number for f in message.DESCRIPTOR.fields}
    assert numbers == fields


def test_enums() -> None:
    assert [(v.name, v.number) for v in content_pb2.WriteAction.DESCRIPTOR.values] == [
        ("STAT", 0),
        ("WRITE", 1),
        ("COMMIT", 2),
    ]
    assert [(v.name, v.number) for v in snapshots_pb2.Kind.DESCRIPTOR.values] == [
        ("UNKNOWN", 0),
        ("VIEW", 1),
        ("ACTIVE", 2),
        ("COMMITTED", 3),
    ]


def test_shared_types() -> None:
    image_target = images_pb2.Image.DESCRIPTOR.fields_by_name["target"].message_type
    assert image_target is not None
    assert image_target.full_name == "containerd.types.Descriptor"
    mount = snapshots_pb2.PrepareSnapshotResponse.DESCRIPTOR.fields_by_name["mounts"].message_type
    assert mount is not None
    assert mount.full_name == "containerd.types.Mount"
    payloads = diff_pb2.ApplyRequest.DESCRIPTOR.fields_by_name["payloads"].message_type
    assert payloads is not None
    value = payloads.fields_by_name["value"].message_type
    assert value is not None
    assert value.full_name == "google.protobuf.Any"


SERVICES = {
    "/containerd.services.content.v1.Content/": (
        content_grpc.ContentStub,
        {
            "Info": "unary", "Update": "unary", "List": "server", "Delete": "unary",
            "Read": "server", "Status": "unary", "ListStatuses": "unary", "Write": "bidi",
            "Abort": "unary",
        },
    ),
    "/containerd.services.images.v1.Images/": (
        images_grpc.ImagesStub,
        {"Get": "unary", "List": "unary", "Create": "unary", "Update": "unary", "Delete": "unary"},
    ),
    "/containerd.services.leases.v1.Leases/": (
        leases_grpc.LeasesStub,
        {
            "Create": "unary", "Delete": "unary", "List": "unary", "AddResource": "unary",
            "DeleteResource": "unary", "ListResources": "unary",
        },
    ),
    "/containerd.services.snapshots.v1.Snapshots/": (
        snapshots_grpc.SnapshotsStub,
        {
            "Prepare": "unary", "View": "unary", "Mounts": "unary", "Commit": "unary",
            "Remove": "unary", "Stat": "unary", "Update": "unary", "List": "server",
            "Usage": "unary", "Cleanup": "unary",
        },
    ),
    "/containerd.services.diff.v1.Diff/": (
        diff_grpc.DiffStub,
        {"Apply": "unary", "Diff": "unary"},
    ),
}  # fmt: skip

_KINDS = {
    "unary": grpclib.client.UnaryUnaryMethod,
    "server": grpclib.client.UnaryStreamMethod,
    "bidi": grpclib.client.StreamStreamMethod,
}


def test_stub_paths_and_kinds() -> None:
    async def check() -> None:
        # Channel() looks up the event loop, so create it inside one; it never connects.
        channel = grpclib.client.Channel(path="/nonexistent")
        try:
            for prefix, (stub_type, methods) in SERVICES.items():
                stub = stub_type(channel)
                found = {n: m for n, m in vars(stub).items()}
                assert set(found) == set(methods)
                for name, kind in methods.items():
                    method = found[name]
                    assert method.name == prefix + name
                    assert type(method) is _KINDS[kind], name
        finally:
            channel.close()

    asyncio.run(check())


def test_empty_replies() -> None:
    async def check() -> None:
        channel = grpclib.client.Channel(path="/nonexistent")
        try:
            content = content_grpc.ContentStub(channel)
            snapshots = snapshots_grpc.SnapshotsStub(channel)
            leases = leases_grpc.LeasesStub(channel)
            images = images_grpc.ImagesStub(channel)
            for method in (
                content.Delete, content.Abort, snapshots.Commit, snapshots.Remove,
                leases.Delete, leases.AddResource, images.Delete,
            ):  # fmt: skip
                assert method.reply_type is empty_pb2.Empty, method.name
        finally:
            channel.close()

    asyncio.run(check())
