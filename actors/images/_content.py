"""Typed calls of containerd's content, images, leases, snapshots and diff services.

One method is one RPC, counted by :class:`~actors.containerd._remote.Remote` under
``Service.Method`` (a stream counts once). Every call carries the namespace header; calls
that create something also take ``lease``, sent as the ``containerd-lease`` header so
containerd adds what the call creates (blobs, ingests, snapshots) to that lease. The methods
return containerd's protobuf messages; :mod:`actors.images._store` turns them into the
library's structs.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final, TypeAlias

from google.protobuf.field_mask_pb2 import FieldMask

from ..containerd._mounts import Mount, mounts_from_proto
from ..errors import NotFound
from ._pb import (
    content_grpc,
    content_pb2,
    descriptor_pb2,
    diff_grpc,
    diff_pb2,
    images_grpc,
    images_pb2,
    leases_grpc,
    leases_pb2,
    mount_pb2,
    snapshots_grpc,
    snapshots_pb2,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

    from ..containerd._channel import Encoded
    from ..containerd._interface import ContainerdRemote
    from ..containerd._streams import Duplex, ResponseStream

__all__ = [
    "LEASE_HEADER",
    "ContainerdImageServices",
    "ContentWriter",
    "remove_snapshot",
    "snapshot_mounts",
]

LEASE_HEADER: Final = "containerd-lease"

ContentWriter: TypeAlias = (
    "Duplex[content_pb2.WriteContentRequest | Encoded, content_pb2.WriteContentResponse]"
)


def _lease_headers(lease: str | None) -> Mapping[str, str] | None:
    return {LEASE_HEADER: lease} if lease else None


class ContainerdImageServices:
    """Stubs of the five services on a :class:`Remote`'s channel, one typed method per RPC."""

    def __init__(self, remote: ContainerdRemote) -> None:
        self.remote = remote
        channel = remote.channel
        self._content = content_grpc.ContentStub(channel)
        self._images = images_grpc.ImagesStub(channel)
        self._leases = leases_grpc.LeasesStub(channel)
        self._snapshots = snapshots_grpc.SnapshotsStub(channel)
        self._diff = diff_grpc.DiffStub(channel)

    # -- Content ---------------------------------------------------------------------------

    async def content_info(self, digest: str) -> content_pb2.Info:
        response: content_pb2.InfoResponse = await self.remote.call(
            "Content.Info", self._content.Info, content_pb2.InfoRequest(digest=digest)
        )
        return response.info

    async def content_update_labels(
        self, digest: str, labels: Mapping[str, str], *, lease: str | None = None
    ) -> content_pb2.Info:
        """Set (or, with an empty value, delete) just these labels; others stay."""
        request = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels=dict(labels)),
            update_mask=FieldMask(paths=[f"labels.{key}" for key in labels]),
        )
        response: content_pb2.UpdateResponse = await self.remote.call(
            "Content.Update", self._content.Update, request, headers=_lease_headers(lease)
        )
        return response.info

    async def content_delete(self, digest: str) -> None:
        await self.remote.call(
            "Content.Delete", self._content.Delete, content_pb2.DeleteContentRequest(digest=digest)
        )

    async def content_status(self, ref: str) -> content_pb2.Status:
        response: content_pb2.StatusResponse = await self.remote.call(
            "Content.Status", self._content.Status, content_pb2.StatusRequest(ref=ref)
        )
        return response.status

    async def content_list_statuses(self, filters: Iterable[str] = ()) -> list[content_pb2.Status]:
        response: content_pb2.ListStatusesResponse = await self.remote.call(
            "Content.ListStatuses",
            self._content.ListStatuses,
            content_pb2.ListStatusesRequest(filters=list(filters)),
        )
        return list(response.statuses)

    async def content_abort(self, ref: str) -> None:
        await self.remote.call(
            "Content.Abort", self._content.Abort, content_pb2.AbortRequest(ref=ref)
        )

    async def content_list(self, filters: Iterable[str] = ()) -> list[content_pb2.Info]:
        result: list[content_pb2.Info] = []
        request = content_pb2.ListContentRequest(filters=list(filters))
        async with self.remote.open_server_stream(
            "Content.List", self._content.List, request
        ) as stream:
            async for batch in stream:
                result.extend(batch.info)
        return result

    @contextlib.asynccontextmanager
    async def content_read(
        self, digest: str, *, offset: int = 0, size: int = 0
    ) -> AsyncIterator[ResponseStream[content_pb2.ReadContentResponse]]:
        """Stream a blob (chunks of at most 1 MiB); ``size`` 0 reads to the end."""
        request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        async with self.remote.open_server_stream(
            "Content.Read", self._content.Read, request
        ) as stream:
            yield stream

    @contextlib.asynccontextmanager
    async def content_write(self, *, lease: str | None = None) -> AsyncIterator[ContentWriter]:
        """Open Content.Write: one response per request, COMMIT ends it (``end=True``).

        A request may also be :class:`~actors.containerd._channel.Encoded` (serialized by the
        caller, see :mod:`actors.images._ingest`)."""
        async with self.remote.open_duplex(
            "Content.Write", self._content.Write, headers=_lease_headers(lease)
        ) as duplex:
            yield duplex

    # -- Images ----------------------------------------------------------------------------

    async def images_get(self, name: str) -> images_pb2.Image:
        response: images_pb2.GetImageResponse = await self.remote.call(
            "Images.Get", self._images.Get, images_pb2.GetImageRequest(name=name)
        )
        return response.image

    async def images_list(self, filters: Iterable[str] = ()) -> list[images_pb2.Image]:
        response: images_pb2.ListImagesResponse = await self.remote.call(
            "Images.List", self._images.List, images_pb2.ListImagesRequest(filters=list(filters))
        )
        return list(response.images)

    async def images_create(
        self, image: images_pb2.Image, *, lease: str | None = None
    ) -> images_pb2.Image:
        response: images_pb2.CreateImageResponse = await self.remote.call(
            "Images.Create",
            self._images.Create,
            images_pb2.CreateImageRequest(image=image),
            headers=_lease_headers(lease),
        )
        return response.image

    async def images_update(
        self, image: images_pb2.Image, paths: Iterable[str], *, lease: str | None = None
    ) -> images_pb2.Image:
        response: images_pb2.UpdateImageResponse = await self.remote.call(
            "Images.Update",
            self._images.Update,
            images_pb2.UpdateImageRequest(image=image, update_mask=FieldMask(paths=list(paths))),
            headers=_lease_headers(lease),
        )
        return response.image

    async def images_delete(self, name: str, *, sync: bool = False) -> None:
        await self.remote.call(
            "Images.Delete",
            self._images.Delete,
            images_pb2.DeleteImageRequest(name=name, sync=sync),
        )

    # -- Leases ----------------------------------------------------------------------------

    async def leases_create(self, lease_id: str, labels: Mapping[str, str]) -> leases_pb2.Lease:
        response: leases_pb2.CreateResponse = await self.remote.call(
            "Leases.Create",
            self._leases.Create,
            leases_pb2.CreateRequest(id=lease_id, labels=dict(labels)),
        )
        return response.lease

    async def leases_delete(self, lease_id: str, *, sync: bool = False) -> None:
        await self.remote.call(
            "Leases.Delete", self._leases.Delete, leases_pb2.DeleteRequest(id=lease_id, sync=sync)
        )

    async def leases_list(self, filters: Iterable[str] = ()) -> list[leases_pb2.Lease]:
        response: leases_pb2.ListResponse = await self.remote.call(
            "Leases.List", self._leases.List, leases_pb2.ListRequest(filters=list(filters))
        )
        return list(response.leases)

    async def leases_add_resource(self, lease_id: str, resource_id: str, kind: str) -> None:
        """Add ``resource_id`` of type ``kind`` (``content``, ``ingests``, ``snapshots/<sn>``)."""
        request = leases_pb2.AddResourceRequest(
            id=lease_id, resource=leases_pb2.Resource(id=resource_id, type=kind)
        )
        await self.remote.call("Leases.AddResource", self._leases.AddResource, request)

    # -- Snapshots -------------------------------------------------------------------------

    async def snapshots_prepare(
        self,
        snapshotter: str,
        key: str,
        parent: str,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[mount_pb2.Mount]:
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        response: snapshots_pb2.PrepareSnapshotResponse = await self.remote.call(
            "Snapshots.Prepare", self._snapshots.Prepare, request, headers=_lease_headers(lease)
        )
        return list(response.mounts)

    async def snapshots_view(
        self, snapshotter: str, key: str, parent: str, *, lease: str | None = None
    ) -> list[mount_pb2.Mount]:
        request = snapshots_pb2.ViewSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent)
        response: snapshots_pb2.ViewSnapshotResponse = await self.remote.call(
            "Snapshots.View", self._snapshots.View, request, headers=_lease_headers(lease)
        )
        return list(response.mounts)

    async def snapshots_mounts(self, snapshotter: str, key: str) -> list[mount_pb2.Mount]:
        response: snapshots_pb2.MountsResponse = await self.remote.call(
            "Snapshots.Mounts",
            self._snapshots.Mounts,
            snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key),
        )
        return list(response.mounts)

    async def snapshots_commit(
        self,
        snapshotter: str,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> None:
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        await self.remote.call(
            "Snapshots.Commit", self._snapshots.Commit, request, headers=_lease_headers(lease)
        )

    async def snapshots_remove(self, snapshotter: str, key: str) -> None:
        await self.remote.call(
            "Snapshots.Remove",
            self._snapshots.Remove,
            snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
        )

    async def snapshots_stat(self, snapshotter: str, key: str) -> snapshots_pb2.Info:
        response: snapshots_pb2.StatSnapshotResponse = await self.remote.call(
            "Snapshots.Stat",
            self._snapshots.Stat,
            snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
        )
        return response.info

    async def snapshots_list(
        self, snapshotter: str, filters: Iterable[str] = ()
    ) -> list[snapshots_pb2.Info]:
        result: list[snapshots_pb2.Info] = []
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
        async with self.remote.open_server_stream(
            "Snapshots.List", self._snapshots.List, request
        ) as stream:
            async for batch in stream:
                result.extend(batch.info)
        return result

    # -- Diff ------------------------------------------------------------------------------

    async def diff_apply(
        self,
        layer: descriptor_pb2.Descriptor,
        mounts: Iterable[mount_pb2.Mount],
        *,
        lease: str | None = None,
        deadline: float | None = None,
    ) -> descriptor_pb2.Descriptor:
        request = diff_pb2.ApplyRequest(diff=layer, mounts=list(mounts))
        response: diff_pb2.ApplyResponse = await self.remote.call(
            "Diff.Apply",
            self._diff.Apply,
            request,
            deadline=deadline,
            headers=_lease_headers(lease),
        )
        return response.applied


async def remove_snapshot(remote: ContainerdRemote, snapshotter: str, key: str) -> None:
    """Snapshots.Remove of a container's snapshot; one RPC, a missing one is fine."""
    stub = snapshots_grpc.SnapshotsStub(remote.channel)
    request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
    with contextlib.suppress(NotFound):
        await remote.call("Snapshots.Remove", stub.Remove, request)


async def snapshot_mounts(remote: ContainerdRemote, snapshotter: str, key: str) -> list[Mount]:
    """Snapshots.Mounts of a container's snapshot (for a task of an adopted container)."""
    stub = snapshots_grpc.SnapshotsStub(remote.channel)
    request = snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key)
    response: snapshots_pb2.MountsResponse = await remote.call(
        "Snapshots.Mounts", stub.Mounts, request
    )
    return mounts_from_proto(response.mounts)
