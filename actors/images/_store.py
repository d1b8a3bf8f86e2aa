"""The containerd side of images: blobs into content, image records, leases, unpack.

:class:`ContentStore` is what the pull, import and run paths call. It talks to containerd's
own image store, so what it writes is what ``ctr``/``nerdctl`` see, and vice versa::

    store = ContentStore(remote)                  # remote: actors._remote.Remote
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
import itertools
import re
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import msgspec
import trio

from .._mounts import Mount
from ..errors import (
    AlreadyExists,
    ContainerdActorsError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from ._content import ContainerdImageServices
from ._pb import content_pb2, descriptor_pb2, images_pb2

if TYPE_CHECKING:
    from .._remote import Remote
    from .._streams import Duplex
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

CHUNK_SIZE: Final = 1 << 20
"""Bytes per Content.Write message (containerd's limit per message is 16 MiB)."""

GC_EXPIRE_LABEL: Final = "containerd.io/gc.expire"
GC_REF_CONTENT: Final = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT: Final = "containerd.io/gc.ref.snapshot"
DEFAULT_LEASE_SECONDS: Final = 3600.0
LOCK_RETRIES: Final = 10
LOCK_BACKOFF: Final = 0.05

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class DescriptorLike(Protocol):
    """Anything with a descriptor's three fields (ours, or the registry side's structs)."""

    @property
    def media_type(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...


class Descriptor(msgspec.Struct, frozen=True, kw_only=True):
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = {}

    @classmethod
    def of(cls, descriptor: DescriptorLike) -> Descriptor:
        if isinstance(descriptor, Descriptor):
            return descriptor
        annotations = getattr(descriptor, "annotations", None) or {}
        return cls(
            media_type=descriptor.media_type,
            digest=descriptor.digest,
            size=descriptor.size,
            annotations=dict(annotations),
        )

    def to_proto(self) -> descriptor_pb2.Descriptor:
        return descriptor_pb2.Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=self.size,
            annotations=self.annotations,
        )


class ContentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A committed blob in this namespace."""

    digest: str
    size: int
    labels: dict[str, str]


class IngestResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`ContentStore.ingest` did.

    Attributes:
        digest: the blob.
        present: it was already committed here; nothing was written.
        resumed_from: bytes a previous, interrupted ingest had already written (0 if none).
        written: bytes sent by this call.
    """

    digest: str
    present: bool
    resumed_from: int = 0
    written: int = 0


class ImageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A containerd image record: a name pointing at a manifest or index."""

    name: str
    target: Descriptor
    labels: dict[str, str]
    created_at: float = 0.0
    updated_at: float = 0.0


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    labels: dict[str, str]


BlobSource = AsyncIterable[bytes] | Callable[[int], AsyncIterable[bytes]]
"""A blob's bytes: an async iterable from byte 0, or a callable that starts at an offset.

The callable form (e.g. an HTTP ``Range`` request) lets a resumed ingest skip the bytes
containerd already holds; an iterable is read from 0 and the held prefix is discarded.
"""


def validate_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex>", local=True)
    return digest


def _validate_descriptor(descriptor: DescriptorLike) -> Descriptor:
    desc = Descriptor.of(descriptor)
    validate_digest(desc.digest)
    if not isinstance(desc.size, int) or isinstance(desc.size, bool) or desc.size < 0:
        raise InvalidArgument(f"blob {desc.digest}: invalid size {desc.size!r}", local=True)
    if not desc.media_type:
        raise InvalidArgument(f"blob {desc.digest}: empty media type", local=True)
    return desc


def _validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise InvalidArgument(f"invalid label {key!r}={value!r}", local=True)
        if len(key) + len(value) > 4096:
            raise InvalidArgument(f"label {key!r} is longer than 4096 bytes", local=True)
        result[key] = value
    return result


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


# -- GC labels ------------------------------------------------------------------------------


def manifest_gc_labels(config: DescriptorLike, layers: Sequence[DescriptorLike]) -> dict[str, str]:
    """Labels for a manifest blob: it keeps its config and layers (``…config``, ``…l.<i>``)."""
    labels = {f"{GC_REF_CONTENT}.config": config.digest}
    for i, layer in enumerate(layers):
        labels[f"{GC_REF_CONTENT}.l.{i}"] = layer.digest
    return labels


def index_gc_labels(manifests: Sequence[DescriptorLike]) -> dict[str, str]:
    """Labels for an index blob: it keeps every manifest it lists (``…m.<i>``)."""
    return {f"{GC_REF_CONTENT}.m.{i}": m.digest for i, m in enumerate(manifests)}


def config_gc_labels(snapshotter: str, top_chain_id: str) -> dict[str, str]:
    """Label for a config blob: it keeps the unpacked snapshot chain (as containerd does)."""
    return {f"{GC_REF_SNAPSHOT}.{snapshotter}": top_chain_id}


# -- sources --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _open_source(
    source: BlobSource, offset: int, size: int
) -> AsyncIterator[AsyncIterator[bytes]]:
    """The source's bytes from ``offset`` on, in pieces of at most ``size`` bytes.

    Every async generator involved is closed on the way out (also the source's own, once we
    started reading it), so an abandoned ingest leaves no generator for the GC to finalise.
    """
    if callable(source) and not hasattr(source, "__aiter__"):
        iterable = source(offset)
        skip = 0
    else:
        iterable = source
        skip = offset
    iterator = aiter(iterable)

    async def skipped() -> AsyncGenerator[bytes, None]:
        remaining = skip
        async for chunk in iterator:
            if remaining:
                if len(chunk) <= remaining:
                    remaining -= len(chunk)
                    continue
                chunk = chunk[remaining:]
                remaining = 0
            yield chunk

    async with (
        contextlib.aclosing(skipped()) as pieces,
        contextlib.aclosing(_rechunk(pieces, size)) as chunks,
    ):
        try:
            yield chunks
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def _rechunk(chunks: AsyncIterator[bytes], size: int) -> AsyncGenerator[bytes, None]:
    """Re-cut a byte stream into pieces of exactly ``size`` bytes (the last may be shorter)."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


class _Mismatch(DataLoss):
    """Bytes that can never become the blob: the ingest is aborted."""


async def _commit(
    writer: Duplex[content_pb2.WriteContentRequest, content_pb2.WriteContentResponse],
    desc: Descriptor,
    message: content_pb2.WriteContentRequest,
) -> content_pb2.WriteContentResponse:
    try:
        return await writer.exchange(message, end=True)
    except FailedPrecondition as exc:
        # containerd refused the commit: the size or the digest differ.
        raise _Mismatch(
            f"blob {desc.digest}: content does not match its digest or size ({exc.message})",
            local=True,
        ) from None


def _check_committed(desc: Descriptor, response: content_pb2.WriteContentResponse) -> None:
    if response.digest != desc.digest or int(response.offset) != desc.size:
        raise DataLoss(
            f"blob {desc.digest}: containerd committed {response.digest} ({response.offset} bytes)",
            local=True,
        )


def _check_complete(desc: Descriptor, got: int) -> None:
    if got != desc.size:
        raise DataLoss(
            f"blob {desc.digest}: the source ended after {got} of {desc.size} bytes", local=True
        )


def _too_long(desc: Descriptor) -> _Mismatch:
    return _Mismatch(
        f"blob {desc.digest}: the source has more than the descriptor's {desc.size} bytes",
        local=True,
    )


async def _read_small(desc: Descriptor, source: BlobSource) -> bytes:
    data = bytearray()
    async with _open_source(source, 0, CHUNK_SIZE) as chunks:
        async for chunk in chunks:
            data += chunk
            if len(data) > desc.size:
                raise _too_long(desc)
    _check_complete(desc, len(data))
    return bytes(data)


_T = TypeVar("_T")


async def _retry_locked(fn: Callable[..., Awaitable[_T]], *args: object) -> _T:
    """Run ``fn`` again while containerd says another writer holds the ingest's ref.

    Two ingests of one blob (two pulls sharing a layer) meet on the ref; the second waits for
    the first, then usually finds the blob committed (AlreadyExists: present).
    """
    for attempt in itertools.count():
        try:
            return await fn(*args)
        except Unavailable as exc:
            if "locked" not in exc.message or attempt >= LOCK_RETRIES:
                raise
        await trio.sleep(min(LOCK_BACKOFF * 2**attempt, 2.0))
    raise AssertionError("unreachable")  # pragma: no cover


class ContentStore:
    """containerd's content, image, lease, snapshot and diff services for one namespace.

    Args:
        remote: the client's :class:`~actors._remote.Remote` (namespace and RPC counters).
        snapshotter: the snapshotter for unpack and container snapshots; by default
            ``overlayfs``, or ``native`` when containerd cannot use overlayfs (probed once,
            one RPC, on first use).
    """

    def __init__(self, remote: Remote, *, snapshotter: str | None = None) -> None:
        self.services = ContainerdImageServices(remote)
        self._snapshotter = snapshotter
        self._probe_lock = trio.Lock()

    @property
    def remote(self) -> Remote:
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
        checked = _validate_labels(labels)
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
        desc = _validate_descriptor(descriptor)
        label_map = _validate_labels(labels)
        if check_present:
            info = await self.has(desc.digest)
            if info is not None:
                await self._adopt_present(desc.digest, info.labels, label_map, lease)
                return IngestResult(digest=desc.digest, present=True)
        ingest_ref = ref or f"actors-{desc.digest}"
        try:
            return await self._write(desc, source, label_map, lease, ingest_ref)
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

    async def _write(
        self,
        desc: Descriptor,
        source: BlobSource,
        labels: dict[str, str],
        lease: str | None,
        ref: str,
    ) -> IngestResult:
        try:
            if desc.size <= CHUNK_SIZE:
                data = await _read_small(desc, source)
                return await _retry_locked(self._write_small, desc, data, labels, lease, ref)
            # The source is opened only once the ref is ours, so a retry reads it afresh.
            return await _retry_locked(self._write_chunks, desc, source, labels, lease, ref)
        except _Mismatch:
            # After the stream is gone (it holds the ref's lock): drop the bytes.
            await self._abort_shielded(ref)
            raise

    async def _write_small(
        self,
        desc: Descriptor,
        data: bytes,
        labels: dict[str, str],
        lease: str | None,
        ref: str,
    ) -> IngestResult:
        # One COMMIT message (which truncates any earlier partial ingest of the ref).
        async with self.services.content_write(lease=lease) as writer:
            response = await _commit(
                writer,
                desc,
                content_pb2.WriteContentRequest(
                    action=content_pb2.COMMIT,
                    ref=ref,
                    total=desc.size,
                    expected=desc.digest,
                    offset=0,
                    data=data,
                    labels=labels,
                ),
            )
        _check_committed(desc, response)
        return IngestResult(digest=desc.digest, present=False, written=len(data))

    async def _write_chunks(
        self,
        desc: Descriptor,
        source: BlobSource,
        labels: dict[str, str],
        lease: str | None,
        ref: str,
    ) -> IngestResult:
        request = content_pb2.WriteContentRequest
        async with self.services.content_write(lease=lease) as writer:
            # STAT opens (or resumes) the ingest and says how many bytes it already holds.
            status = await writer.exchange(
                request(action=content_pb2.STAT, ref=ref, total=desc.size, expected=desc.digest)
            )
            start = int(status.offset)
            if start > desc.size:
                start = 0  # not this blob's bytes; a WRITE at 0 truncates them
            offset = start
            pending = b""
            if offset < desc.size:
                # One piece held back, so the last one travels with the COMMIT.
                async with _open_source(source, offset, CHUNK_SIZE) as pieces:
                    async for piece in pieces:
                        if pending:
                            response = await writer.exchange(
                                request(action=content_pb2.WRITE, offset=offset, data=pending)
                            )
                            offset += len(pending)
                            if int(response.offset) != offset:
                                raise _Mismatch(
                                    f"blob {desc.digest}: containerd holds {response.offset}"
                                    f" bytes, expected {offset}",
                                    local=True,
                                )
                        pending = piece
                        if offset + len(pending) > desc.size:
                            raise _too_long(desc)
            # A short but clean end keeps the bytes, for a resume from where they stop.
            _check_complete(desc, offset + len(pending))
            response = await _commit(
                writer,
                desc,
                request(
                    action=content_pb2.COMMIT,
                    offset=offset,
                    data=pending,
                    total=desc.size,
                    expected=desc.digest,
                    labels=labels,
                ),
            )
        _check_committed(desc, response)
        return IngestResult(
            digest=desc.digest, present=False, resumed_from=start, written=desc.size - start
        )

    async def _abort_shielded(self, ref: str) -> None:
        with trio.CancelScope(shield=True), contextlib.suppress(NotFound):
            await self.services.content_abort(ref)

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
        label_map = _validate_labels(labels)
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
    ) -> ImageRecord:
        """Create the image record, or point an existing one at ``target`` (1 or 2 RPCs)."""
        if not isinstance(name, str) or not name or len(name) > 4096:
            raise InvalidArgument(f"invalid image name {name!r}", local=True)
        desc = _validate_descriptor(target)
        if desc.size <= 0:
            raise InvalidArgument(f"image {name}: target size must be positive", local=True)
        image = images_pb2.Image(name=name, labels=_validate_labels(labels), target=desc.to_proto())
        try:
            created = await self.services.images_create(image, lease=lease)
        except AlreadyExists:
            created = await self.services.images_update(image, ["target", "labels"], lease=lease)
        return _image_record(created)

    async def get_image(self, name: str) -> ImageRecord:
        """One RPC; NotFound when there is no such image."""
        return _image_record(await self.services.images_get(name))

    async def list_images(self, filters: Iterable[str] = ()) -> list[ImageRecord]:
        """One RPC; containerd's filter syntax (entries ORed)."""
        return [_image_record(image) for image in await self.services.images_list(filters)]

    async def delete_image(self, name: str, *, sync: bool = True) -> None:
        """Remove the record; with ``sync`` containerd's GC runs before this returns. One RPC.

        What only this image kept alive (blobs, unpacked snapshots) is then collected.
        """
        await self.services.images_delete(name, sync=sync)

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
            labels=_validate_labels(labels),
        )

    async def remove_snapshot(self, key: str, *, snapshotter: str | None = None) -> None:
        """Remove a snapshot (a container's, when it is deleted). One RPC; NotFound ignored."""
        with contextlib.suppress(NotFound):
            await self.services.snapshots_remove(snapshotter or await self.snapshotter(), key)
