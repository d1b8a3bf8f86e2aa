"""The containerd side of images: blobs into content, image records, leases, unpack.

:class:`ContentStore` is what the pull, import and run paths call. It talks to containerd's
own image store, so what it writes is what ``ctr``/``nerdctl`` see, and vice versa::

    store = ContentStore(remote)                  # remote: a ContainerdRemote
    async with store.open_lease() as lease:       # Leases.Create ... Leases.Delete
        for blob, source in blobs:                # layers, config, then the manifest
            await store.ingest(blob, source, labels=..., lease=lease)
        await store.create_image("docker.io/library/app:1", manifest_descriptor)
        result = await store.unpack(manifest.layers, config.diff_ids,
                                    config_digest=config_descriptor.digest, lease=lease)

    # A container on the image: its snapshot is leased until its record names it.
    async with store.open_lease() as lease:
        mounts = await store.prepare_container_snapshot("c1", result.chain_id, lease=lease)
        container = await client.new_container(
            "c1", spec, rootfs=mounts, snapshotter=result.snapshotter, snapshot_key="c1")
    ...
    await container.delete()                      # Containers.Delete + Snapshots.Remove

A pull that overlaps downloads with unpacking uses :meth:`ContentStore.unpacked_layers`
once, then :meth:`ContentStore.apply_layer` per layer as each blob lands.

RPCs (counted by the remote's statistics):

- :meth:`ContentStore.ingest`: ``Content.Info`` (skipped with ``check_present=False``), then
  either nothing more (present: plus ``Leases.AddResource`` under a lease and a
  ``Content.Update`` only for missing labels) or one ``Content.Write`` stream. A blob of at
  most 1 MiB is one COMMIT message; a bigger one is STAT (the offset a previous, interrupted
  ingest of the same ref reached), WRITEs of 1 MiB from there, and a COMMIT carrying the last
  bytes and the labels. containerd checks size and digest before it commits; a mismatch is
  :class:`~actors.errors.DataLoss` and the ingest is aborted (``Content.Abort``), so nothing
  of it remains. A source that yields more bytes than the descriptor says is cut off and
  aborted the same way. An interrupted ingest (cancelled, or the source failed) keeps its
  bytes under its ref (and the lease), and the next ``ingest`` of that digest continues from
  there.
- :meth:`ContentStore.open_lease`: ``Leases.Create`` with a ``containerd.io/gc.expire`` label
  (so a crash leaves nothing that outlives it) and ``Leases.Delete`` on the way out, also
  after a failure (shielded).
- :meth:`ContentStore.create_image`: ``Images.Create``; ``Images.Update`` if the name exists.
- :meth:`ContentStore.delete_image`: ``Images.Delete`` with ``sync`` (containerd runs its
  garbage collector before answering, which removes what only the image kept alive).
- unpack and container snapshots: see :mod:`actors.images._unpack`.

GC labels: :func:`manifest_gc_labels` and :func:`index_gc_labels` give the labels a manifest
or index blob needs so containerd's collector keeps its children (put them on the blob's
COMMIT, i.e. ``ingest(labels=...)``), and :func:`config_gc_labels` the label that keeps an
unpacked snapshot chain through the config blob.
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

import trio

from ..containerd._mounts import Mount
from ..errors import AlreadyExists, ContainerdActorsError, InvalidArgument, NotFound
from ._content import ContainerdImageServices
from ._ingest import CHUNK_SIZE, write_blob
from ._names import ImageNameCache
from ._pb import images_pb2
from ._types import (
    BlobSource,
    ContentInfo,
    Descriptor,
    DescriptorLike,
    ImageRecord,
    IngestResult,
    Lease,
    config_gc_labels,
    index_gc_labels,
    manifest_gc_labels,
    validate_descriptor,
    validate_digest,
    validate_labels,
)

if TYPE_CHECKING:
    from ..containerd._interface import ContainerdRemote
    from ._unpack import UnpackResult

__all__ = [
    "CHUNK_SIZE",
    "BlobSource",
    "ContentInfo",
    "ContentStore",
    "Descriptor",
    "DescriptorLike",
    "ImageRecord",
    "IngestResult",
    "Lease",
    "Mount",
    "config_gc_labels",
    "index_gc_labels",
    "manifest_gc_labels",
    "validate_digest",
]

GC_EXPIRE_LABEL: Final = "containerd.io/gc.expire"
DEFAULT_LEASE_SECONDS: Final = 3600.0


def _timestamp(ts: object) -> float:
    seconds = getattr(ts, "seconds", 0)
    nanos = getattr(ts, "nanos", 0)
    return float(seconds) + float(nanos) / 1e9


def _image_record(image: images_pb2.Image) -> ImageRecord:
    target = image.target
    return ImageRecord(
        name=image.name,
        target=Descriptor(
            media_type=target.media_type,
            digest=target.digest,
            size=int(target.size),
            annotations=dict(target.annotations),
        ),
        labels=dict(image.labels),
        created_at=_timestamp(image.created_at),
        updated_at=_timestamp(image.updated_at),
    )


class ContentStore:
    """containerd's content, image, lease, snapshot and diff services for one namespace.

    Args:
        remote: the client's :class:`~actors.containerd._interface.ContainerdRemote`
            (namespace and RPC counters).
        snapshotter: the snapshotter for unpack and container snapshots; by default
            ``overlayfs``, or ``native`` when containerd cannot use overlayfs (probed once,
            one RPC, on first use).
    """

    def __init__(
        self,
        remote: ContainerdRemote,
        *,
        snapshotter: str | None = None,
        names: ImageNameCache | None = None,
    ) -> None:
        self.services = ContainerdImageServices(remote)
        self._snapshotter = snapshotter
        # Without a client's event router feeding it, the cache never goes live (never used).
        self.names = names if names is not None else ImageNameCache()
        self._probe_lock = trio.Lock()

    @property
    def remote(self) -> ContainerdRemote:
        return self.services.remote

    # -- content ---------------------------------------------------------------------------

    async def has(self, digest: str) -> ContentInfo | None:
        """The blob's info if it is committed in this namespace, else None. One RPC."""
        validate_digest(digest)
        try:
            info = await self.services.content_info(digest)
        except NotFound:
            return None
        return ContentInfo(digest=info.digest, size=int(info.size), labels=dict(info.labels))

    async def read(self, digest: str, *, limit: int) -> bytes:
        """A whole blob (one Content.Read stream); refuses blobs over ``limit`` bytes."""
        validate_digest(digest)
        data = bytearray()
        async with self.services.content_read(digest, size=limit + 1) as stream:
            async for chunk in stream:
                data += chunk.data
                if len(data) > limit:
                    raise InvalidArgument(f"blob {digest} is larger than {limit} bytes", local=True)
        return bytes(data)

    async def set_labels(
        self, digest: str, labels: Mapping[str, str], *, lease: str | None = None
    ) -> None:
        """Set these labels on a blob (others stay); an empty value removes one. One RPC."""
        validate_digest(digest)
        checked = validate_labels(labels)
        if checked:
            await self.services.content_update_labels(digest, checked, lease=lease)

    async def ingest(
        self,
        descriptor: DescriptorLike,
        source: BlobSource,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
        check_present: bool = True,
        ref: str | None = None,
    ) -> IngestResult:
        """Store a blob, verified by containerd against ``descriptor``'s digest and size.

        Args:
            descriptor: media type, digest and size the bytes must have.
            source: the bytes (see :data:`BlobSource`); not touched when the blob is present.
            labels: the blob's labels (GC references), set at commit, or added when present.
            lease: lease id; the blob (and the ingest while it lasts) belongs to it.
            check_present: first ask Content.Info, and skip the write when it is there.
            ref: the ingest's name; by default derived from the digest, so an interrupted
                ingest of the same blob resumes.

        Raises:
            InvalidArgument: bad descriptor or labels (nothing sent).
            DataLoss: the bytes do not match the descriptor (nothing committed).
        """
        desc = validate_descriptor(descriptor)
        label_map = validate_labels(labels)
        if check_present:
            info = await self.has(desc.digest)
            if info is not None:
                await self._adopt_present(desc.digest, info.labels, label_map, lease)
                return IngestResult(digest=desc.digest, present=True)
        ingest_ref = ref or f"actors-{desc.digest}"
        try:
            return await write_blob(self.services, desc, source, label_map, lease, ingest_ref)
        except AlreadyExists:
            # Committed meanwhile, or present before (check_present=False): containerd has
            # added it to our lease already; our labels were not applied.
            if label_map:
                await self.services.content_update_labels(desc.digest, label_map, lease=lease)
            return IngestResult(digest=desc.digest, present=True)

    async def _adopt_present(
        self,
        digest: str,
        current: Mapping[str, str],
        wanted: Mapping[str, str],
        lease: str | None,
    ) -> None:
        if lease:
            # Present but perhaps referenced by nothing: hold it until our image refers to it.
            await self.services.leases_add_resource(lease, digest, "content")
        missing = {k: v for k, v in wanted.items() if current.get(k) != v}
        if missing:
            await self.services.content_update_labels(digest, missing, lease=lease)

    async def ingest_status(self, ref: str) -> int | None:
        """Bytes an unfinished ingest holds (None if there is none). One RPC."""
        try:
            status = await self.services.content_status(ref)
        except NotFound:
            return None
        return int(status.offset)

    # -- leases ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_lease(
        self,
        *,
        expire_after: float = DEFAULT_LEASE_SECONDS,
        labels: Mapping[str, str] | None = None,
        lease_id: str | None = None,
    ) -> AsyncIterator[str]:
        """A lease for the block: what is written under it survives GC until it is deleted.

        Two RPCs: Leases.Create with ``containerd.io/gc.expire`` (so a crash leaves nothing
        that outlives it) and Leases.Delete when the block ends, whatever way it ends.
        Yields the lease id, to pass as ``lease=`` to the other methods.
        """
        label_map = validate_labels(labels)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expire_after)
        label_map[GC_EXPIRE_LABEL] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        new_id = lease_id or f"actors-{time.time_ns()}-{secrets.token_hex(3)}"
        lease = await self.services.leases_create(new_id, label_map)
        try:
            yield lease.id
        except BaseException:
            # The block's failure is what the caller must see; a failed delete only means
            # the lease lasts until its expiry label lets GC take it.
            with trio.CancelScope(shield=True), contextlib.suppress(ContainerdActorsError):
                await self.services.leases_delete(lease.id)
            raise
        with trio.CancelScope(shield=True), contextlib.suppress(NotFound):
            await self.services.leases_delete(lease.id)

    async def leases(self) -> list[Lease]:
        """Every lease in this namespace. One RPC."""
        return [
            Lease(id=lease.id, labels=dict(lease.labels))
            for lease in await self.services.leases_list()
        ]

    async def collect_garbage(self) -> None:
        """Run containerd's garbage collector now (a throwaway lease deleted with sync).

        Two RPCs; for tests and ``rmi``-style cleanups.
        """
        lease_id = f"actors-gc-{time.time_ns()}-{secrets.token_hex(3)}"
        await self.services.leases_create(lease_id, {})
        await self.services.leases_delete(lease_id, sync=True)

    # -- images ----------------------------------------------------------------------------

    async def create_image(
        self,
        name: str,
        target: DescriptorLike,
        labels: Mapping[str, str] | None = None,
        *,
        lease: str | None = None,
        replace: bool = True,
    ) -> ImageRecord:
        """Create the image record, or point an existing one at ``target`` (1 or 2 RPCs;
        with ``replace=False`` an existing one is left alone: AlreadyExists)."""
        if not isinstance(name, str) or not name or len(name) > 4096:
            raise InvalidArgument(f"invalid image name {name!r}", local=True)
        desc = validate_descriptor(target)
        if desc.size <= 0:
            raise InvalidArgument(f"image {name}: target size must be positive", local=True)
        image = images_pb2.Image(name=name, labels=validate_labels(labels), target=desc.to_proto())
        generation = self.names.begin_write(name)
        try:
            try:
                created = await self.services.images_create(image, lease=lease)
            except AlreadyExists:
                if not replace:
                    raise
                created = await self.services.images_update(
                    image, ["target", "labels"], lease=lease
                )
        except BaseException:
            self.names.end_write(name, generation, None)
            raise
        record = _image_record(created)
        self.names.end_write(name, generation, record)
        return record

    async def get_image(self, name: str) -> ImageRecord:
        """One RPC, or none when the client's name cache holds it (see
        :mod:`actors.images._names`); NotFound when there is no such image."""
        cached = self.names.lookup(name)
        if cached is not None:
            return cached
        generation = self.names.generation
        record = _image_record(await self.services.images_get(name))
        self.names.fill(record, generation)
        return record

    async def list_images(self, filters: Iterable[str] = ()) -> list[ImageRecord]:
        """One RPC; containerd's filter syntax (entries ORed)."""
        return [_image_record(image) for image in await self.services.images_list(filters)]

    async def delete_image(self, name: str, *, sync: bool = True) -> None:
        """Remove the record; with ``sync`` containerd's GC runs before this returns. One RPC.

        What only this image kept alive (blobs, unpacked snapshots) is then collected.
        """
        self.names.forget(name)
        try:
            await self.services.images_delete(name, sync=sync)
        finally:
            self.names.forget(name)

    # -- snapshots (see _unpack) -----------------------------------------------------------

    async def snapshotter(self) -> str:
        """The snapshotter in use: as given, else ``overlayfs`` if containerd has it loaded,
        else ``native`` (probed once, one RPC)."""
        if self._snapshotter is not None:
            return self._snapshotter
        async with self._probe_lock:
            if self._snapshotter is None:
                from ._unpack import probe_snapshotter

                self._snapshotter = await probe_snapshotter(self.services)
        return self._snapshotter

    async def unpack(
        self,
        layers: Sequence[DescriptorLike],
        diff_ids: Sequence[str],
        *,
        config_digest: str | None = None,
        snapshotter: str | None = None,
        lease: str | None = None,
    ) -> UnpackResult:
        """Unpack an image's layers into snapshots; see :func:`actors.images._unpack.unpack`."""
        from ._unpack import unpack

        return await unpack(
            self.services,
            layers,
            diff_ids,
            snapshotter=snapshotter or await self.snapshotter(),
            config_digest=config_digest,
            lease=lease,
        )

    async def unpacked_layers(
        self, diff_ids: Sequence[str], *, snapshotter: str | None = None
    ) -> int:
        """How many bottom layers of an image are unpacked already (one Snapshots.List).

        With :meth:`apply_layer` this lets a pull apply each layer as soon as its blob is
        in, while the next one downloads.
        """
        from ._unpack import chain_ids, unpacked_layers

        ids = chain_ids(diff_ids)
        return await unpacked_layers(self.services, snapshotter or await self.snapshotter(), ids)

    async def apply_layer(
        self,
        layer: DescriptorLike,
        diff_ids: Sequence[str],
        index: int,
        *,
        snapshotter: str | None = None,
        lease: str | None = None,
    ) -> bool:
        """Apply layer ``index`` (its parents unpacked) as the snapshot of its chain ID.

        Three RPCs (Prepare, Diff.Apply, Commit); False if another unpack committed it
        first. DataLoss when the layer's content is not ``diff_ids[index]``.
        """
        from ._unpack import apply_layer, chain_ids

        if not 0 <= index < len(diff_ids):
            raise InvalidArgument(f"no layer {index} in {len(diff_ids)} diff IDs", local=True)
        validate_digest(layer.digest)
        ids = chain_ids(diff_ids)
        return await apply_layer(
            self.services,
            layer,
            diff_ids[index],
            ids[index],
            ids[index - 1] if index else "",
            snapshotter=snapshotter or await self.snapshotter(),
            lease=lease,
        )

    async def prepare_container_snapshot(
        self,
        key: str,
        chain_id: str,
        *,
        snapshotter: str | None = None,
        lease: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Mount]:
        """An active snapshot ``key`` on top of the image chain ``chain_id``: its mounts.

        One RPC (Snapshots.Prepare). Until a container record names it (``snapshotter``
        and ``snapshot_key``), only ``lease`` keeps it from containerd's GC.
        """
        from ._unpack import prepare_container_snapshot

        return await prepare_container_snapshot(
            self.services,
            key,
            chain_id,
            snapshotter=snapshotter or await self.snapshotter(),
            lease=lease,
            labels=validate_labels(labels),
        )

    async def remove_snapshot(self, key: str, *, snapshotter: str | None = None) -> None:
        """Remove a snapshot (a container's, when it is deleted). One RPC; NotFound ignored."""
        with contextlib.suppress(NotFound):
            await self.services.snapshots_remove(snapshotter or await self.snapshotter(), key)
