"""The public images API: pull, list, inspect, remove, import and export, in containerd's store.

A client owns one :class:`Images` (``client.images``). Everything it writes goes through
containerd's content, images, leases, snapshots and diff services, so ``ctr`` and
``nerdctl`` see what we pull and we run what they pull::

    import trio
    from actors import open_client

    async def main() -> None:
        async with open_client() as client:
            image = await client.images.pull("busybox", progress=print)
            print(image.name, image.id, image.size)
            container = await client.new_container("hello", image=image, args=["echo", "hi"])
            ...
            await client.images.remove(image.name)

    trio.run(main)

A pull (see :func:`actors.images._pull.pull_image`) resolves the reference, then under one
lease fetches the layers concurrently while unpacking them in order, writes config,
manifest and index with their GC labels and creates (or updates) the image record.

Manifests, indexes and configs are immutable by digest, so they are cached in memory (a
bounded cache): turning an image record into an :class:`Image` costs one Images.Get the
first time a digest is seen plus two or three Content.Reads, then only the Images.Get.
Names are cached too, while containerd's image events can keep them true (see
:mod:`actors.images._names`): then resolving a known name costs nothing.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Final

import msgspec
import trio

from ..errors import ContainerdActorsError, DataLoss, InvalidArgument, NotFound
from ._archive import (
    ArchiveImage,
    DockerSaveEntry,
    ImageArchive,
    named_descriptor,
    read_archive,
    write_oci_archive,
)
from ._auth import Credentials
from ._builtin import ensure_busybox_image
from ._digest import digest_of
from ._dockerconfig import DockerConfig
from ._media import (
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    decode_config,
    decode_manifest_or_index,
)
from ._model import (
    Image,
    LayerProgress,
    ProgressCallback,
    bytes_source,
    image_of,
)
from ._passwd import ExecUser, read_user_files, resolve_user
from ._platform import Platform, choose_manifest, host_platform, parse_platform
from ._pull import pull_image
from ._reference import parse_reference
from ._store import ContentStore, ImageRecord
from ._types import config_gc_labels, index_gc_labels, manifest_gc_labels

if TYPE_CHECKING:
    from ..containerd._mounts import Mount

__all__ = [
    "Image",
    "Images",
    "LayerProgress",
    "ProgressCallback",
    "PullProgress",
    "normalize_name",
]

_CACHE_ENTRIES: Final = 512
_COPY_CHUNK: Final = 1 << 20


def normalize_name(name: str) -> str:
    """Docker's normalisation: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    return str(parse_reference(name))


class PullProgress:
    """The progress of one pull, as an async iterator of :class:`LayerProgress` (see
    :meth:`Images.pulling`). ``image`` is set once the pull succeeded."""

    def __init__(self) -> None:
        self.image: Image | None = None
        self._queue: collections.OrderedDict[tuple[int, str], LayerProgress] = (
            collections.OrderedDict()
        )
        self._counter = 0
        self._done = False
        self._wakeup = trio.Event()

    def _push(self, layer: LayerProgress) -> None:
        # Byte counts of the same layer replace each other; state changes are all kept.
        if layer.state == "downloading":
            key: tuple[int, str] = (layer.index, "downloading")
        else:
            self._counter += 1
            key = (layer.index, f"{layer.state}-{self._counter}")
        self._queue[key] = layer
        self._wakeup.set()

    def _finish(self) -> None:
        self._done = True
        self._wakeup.set()

    def __aiter__(self) -> PullProgress:
        return self

    async def __anext__(self) -> LayerProgress:
        while not self._queue:
            if self._done:
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        _, layer = self._queue.popitem(last=False)
        return layer


class Images:
    """The image store of one client's namespace. Get it as ``client.images``.

    Args:
        store: the namespace's :class:`~actors.images._store.ContentStore`.
        platform: the platform to pick from an index (default: this host's).
        insecure: registries reached over plain HTTP besides loopback ones (``host[:port]``
            or a CIDR), for every pull of this client unless a pull names its own.
    """

    def __init__(
        self,
        store: ContentStore,
        *,
        platform: Platform | str | None = None,
        insecure: Iterable[str] = (),
    ) -> None:
        self.store = store
        if isinstance(platform, str):
            platform = parse_platform(platform)
        self.platform = (platform or host_platform()).normalized()
        self.insecure = tuple(insecure)
        self._documents: collections.OrderedDict[str, Manifest | Index | ImageConfig] = (
            collections.OrderedDict()
        )
        # (config digest, user spec) -> its resolution: the config's diff IDs fix the files.
        self._users: collections.OrderedDict[tuple[str, str], ExecUser] = collections.OrderedDict()

    # -- documents (immutable by digest, cached) -------------------------------------------

    def _cached(self, digest: str) -> Manifest | Index | ImageConfig | None:
        doc = self._documents.get(digest)
        if doc is not None:
            self._documents.move_to_end(digest)
        return doc

    def remember(self, digest: str, doc: Manifest | Index | ImageConfig) -> None:
        """Cache a verified document (the pull and import paths call this)."""
        self._documents[digest] = doc
        self._documents.move_to_end(digest)
        while len(self._documents) > _CACHE_ENTRIES:
            self._documents.popitem(last=False)

    async def _read_verified(self, desc: Descriptor, limit: int) -> bytes:
        if desc.size > limit:
            raise InvalidArgument(f"blob {desc.digest} is over {limit >> 20} MiB", local=True)
        data = await self.store.read(desc.digest, limit=limit)
        if len(data) != desc.size or digest_of(data) != desc.digest:
            raise DataLoss(f"blob {desc.digest} in the content store does not match", local=True)
        return data

    async def _document(self, desc: Descriptor) -> Manifest | Index:
        doc = self._cached(desc.digest)
        if isinstance(doc, Manifest | Index):
            return doc
        data = await self._read_verified(desc, MAX_MANIFEST_BYTES)
        decoded = decode_manifest_or_index(data, desc.media_type)
        self.remember(desc.digest, decoded)
        return decoded

    async def _config(self, desc: Descriptor, manifest: Manifest) -> ImageConfig:
        doc = self._cached(desc.digest)
        if isinstance(doc, ImageConfig):
            return doc
        data = await self._read_verified(desc, MAX_CONFIG_BYTES)
        config = decode_config(data, manifest)
        self.remember(desc.digest, config)
        return config

    async def _from_record(self, record: ImageRecord) -> Image:
        stored = record.target
        target = Descriptor(media_type=stored.media_type, digest=stored.digest, size=stored.size)
        desc = target
        doc = await self._document(desc)
        depth = 0
        while isinstance(doc, Index):
            depth += 1
            if depth > 3:
                raise InvalidArgument(f"image {record.name}: indexes nested too deep", local=True)
            entry = choose_manifest(doc.manifests, self.platform, name=record.name)
            desc = Descriptor(media_type=entry.media_type, digest=entry.digest, size=entry.size)
            doc = await self._document(desc)
        config = await self._config(doc.config, doc)
        return image_of(
            record.name, target, desc, doc, doc.config, config, created_at=record.created_at
        )

    # -- queries ---------------------------------------------------------------------------

    async def get(self, name: str) -> Image:
        """The image called ``name`` (docker-normalised: ``busybox`` works).

        One Images.Get (none for a name in the client's name cache), plus up to three
        Content.Reads the first time its documents are seen. NotFound when there is no
        such image (or nothing in it for this platform).
        """
        full = normalize_name(name)
        try:
            record = await self.store.get_image(full)
        except NotFound:
            raise NotFound(f"no such image: {name[:256]}", local=True) from None
        return await self._from_record(record)

    inspect = get

    async def list(self) -> list[Image]:
        """Every image of the namespace usable on this platform (one Images.List + reads).

        Images without a manifest for this platform (or whose blobs are gone) are left out.
        """
        result: list[Image] = []
        for record in await self.store.list_images():
            try:
                result.append(await self._from_record(record))
            except (NotFound, InvalidArgument, DataLoss):
                continue
        return sorted(result, key=lambda image: image.name)

    async def exists(self, name: str) -> bool:
        """Whether an image record ``name`` exists (one RPC)."""
        try:
            await self.store.get_image(normalize_name(name))
        except NotFound:
            return False
        return True

    async def remove(self, name: str, *, sync: bool = True) -> None:
        """Remove the image record; with ``sync`` (default) containerd's GC runs before this
        returns, so blobs and snapshots only this image used are gone. One RPC.

        Containers made from the image keep running: their snapshots are their own.
        """
        full = normalize_name(name)
        try:
            await self.store.delete_image(full, sync=sync)
        except NotFound:
            raise NotFound(f"no such image: {name[:256]}", local=True) from None

    # -- pull ------------------------------------------------------------------------------

    async def pull(
        self,
        reference: str,
        *,
        platform: Platform | str | None = None,
        credentials: Credentials | DockerConfig | None = None,
        insecure: Iterable[str] | None = None,
        progress: ProgressCallback | None = None,
        max_concurrent_downloads: int = 3,
    ) -> Image:
        """Pull ``reference`` from its registry, unpack it, and name it in the store.

        Args:
            reference: ``busybox``, ``alpine:3.20``, ``registry:5000/ns/app@sha256:...``.
            platform: ``os/arch[/variant]`` to pick from an index (default: the host's).
            credentials: see :func:`actors.images._registry.open_registry` (default:
                ``~/.docker/config.json`` when the registry asks).
            insecure: plain-HTTP registries (default: the client's list; loopback always).
            progress: called with a :class:`LayerProgress` at every change.
            max_concurrent_downloads: layers fetched at once.

        Raises:
            NotFound, Unauthenticated, PermissionDenied, Unavailable, DataLoss,
            InvalidArgument: see :mod:`actors.images._registry`. A failed pull leaves no
            image record and no lease; what it wrote is left only to containerd's GC.
        """
        want = parse_platform(platform) if isinstance(platform, str) else platform
        image = await pull_image(
            self.store,
            reference,
            platform=(want or self.platform).normalized(),
            credentials=credentials,
            insecure=self.insecure if insecure is None else tuple(insecure),
            progress=progress,
            max_concurrent=max(1, max_concurrent_downloads),
            remember=self.remember,
        )
        return image

    async def ensure_busybox(self) -> Image:
        """``busybox`` (``docker.io/library/busybox:latest``): the image of that name if it
        exists, else the built-in one, made offline from the host's static busybox and
        imported (never replacing an image of that name, e.g. a pulled busybox)::

            image = await client.images.ensure_busybox()
            container = await client.new_container("c1", image=image, args=["echo", "hi"])
        """
        return await ensure_busybox_image(self)

    @contextlib.asynccontextmanager
    async def pulling(
        self,
        reference: str,
        *,
        platform: Platform | str | None = None,
        credentials: Credentials | DockerConfig | None = None,
        insecure: Iterable[str] | None = None,
    ) -> AsyncIterator[PullProgress]:
        """:meth:`pull` with its progress as an async iterator::

            async with client.images.pulling("alpine:3.20") as pull:
                async for layer in pull:        # LayerProgress, until the pull ends
                    print(layer.index, layer.state, layer.done, layer.total)
            image = pull.image                  # the pull's error is raised at the block's end

        Every state change is delivered; byte counts of a layer that is downloading are
        coalesced to the latest when the reader falls behind (nothing else is dropped).
        """
        progress = PullProgress()
        error: BaseException | None = None
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                nonlocal error
                try:
                    progress.image = await self.pull(
                        reference,
                        platform=platform,
                        credentials=credentials,
                        insecure=insecure,
                        progress=progress._push,
                    )
                except Exception as exc:  # raised in the caller's task below
                    error = exc
                finally:
                    progress._finish()

            nursery.start_soon(run)
            try:
                yield progress
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        if progress.image is None:
            raise InvalidArgument(f"pull of {reference[:256]} did not finish", local=True)

    # -- unpack and container snapshots ----------------------------------------------------

    async def unpack(self, image: Image, *, lease: str | None = None) -> None:
        """Unpack ``image``'s layers (those not unpacked yet) from the content store."""
        snapshotter = await self.store.snapshotter()
        await self.store.unpack(
            image.layers,
            image.config.rootfs.diff_ids,
            config_digest=image.config_descriptor.digest,
            snapshotter=snapshotter,
            lease=lease,
        )

    async def prepare_snapshot(self, key: str, image: Image) -> tuple[str, builtins.list[Mount]]:
        """A container's writable snapshot ``key`` on ``image``: (snapshotter, mounts).

        One Snapshots.Prepare when the image is unpacked; otherwise it is unpacked first
        (under a lease) and the prepare retried.
        """
        snapshotter = await self.store.snapshotter()
        try:
            mounts = await self.store.prepare_container_snapshot(
                key, image.chain_id, snapshotter=snapshotter
            )
        except NotFound:
            async with self.store.open_lease() as lease:
                await self.unpack(image, lease=lease)
                mounts = await self.store.prepare_container_snapshot(
                    key, image.chain_id, snapshotter=snapshotter, lease=lease
                )
        return snapshotter, mounts

    # -- users given by name ------------------------------------------------------------

    def cached_user(self, image: Image, text: str) -> ExecUser | None:
        """``text`` (``user[:group]``) resolved for ``image`` before, or None. No I/O."""
        key = (image.config_descriptor.digest, text)
        found = self._users.get(key)
        if found is not None:
            self._users.move_to_end(key)
        return found

    async def resolve_user(self, image: Image, mounts: Sequence[Mount], text: str) -> ExecUser:
        """``text`` looked up in the image's ``/etc/passwd`` and ``/etc/group``, read from
        the container's prepared snapshot ``mounts`` without mounting them (see
        :mod:`actors.images._passwd`); cached by config digest. No RPC.

        Raises:
            InvalidArgument: no such user or group, or the files are unsafe to read (a
                symbolic link, not a regular file, too big).
        """
        cached = self.cached_user(image, text)
        if cached is not None:
            return cached
        try:
            passwd, group = await trio.to_thread.run_sync(read_user_files, mounts, text)
            user = resolve_user(text, passwd, group)
        except InvalidArgument as exc:
            raise InvalidArgument(f"image {image.name}: {exc.message}", local=True) from None
        self._users[(image.config_descriptor.digest, text)] = user
        while len(self._users) > _CACHE_ENTRIES:
            self._users.popitem(last=False)
        return user

    # -- archives --------------------------------------------------------------------------

    async def import_archive(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        base_name: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> builtins.list[Image]:
        """Import every image of an OCI image-layout tar or a ``docker save`` tar.

        Names come from the archive (``io.containerd.image.name`` or docker's
        ``RepoTags``); an OCI entry that carries only a tag is named ``base_name:tag``.
        Every blob is verified, the layers are unpacked, and the images created under one
        lease. All or nothing: the names are created only once every image is in, so an
        archive with a corrupt image creates none (and what was written goes with the
        lease). InvalidArgument when the file is not an image archive, DataLoss when a
        blob does not match its digest.
        """
        if not isinstance(source, str | os.PathLike):
            return await self._import_from(source, base_name, progress)
        fileobj: BinaryIO = await trio.to_thread.run_sync(open, source, "rb")
        try:
            return await self._import_from(fileobj, base_name, progress)
        finally:
            fileobj.close()

    async def _import_from(
        self, fileobj: BinaryIO, base_name: str | None, progress: ProgressCallback | None
    ) -> builtins.list[Image]:
        archive = await trio.to_thread.run_sync(
            lambda: read_archive(fileobj, platform=self.platform)
        )
        names = [self._archive_name(entry, base_name) for entry in archive.images]
        async with self.store.open_lease() as lease:
            # All or nothing: every image's blobs are verified and unpacked under the one
            # lease first; names change only once all of them are in. A failure before
            # that creates no image and leaves only garbage the lease's end releases.
            staged = [
                await self._stage_one(archive, entry, name, lease, progress)
                for name, entry in zip(names, archive.images, strict=True)
            ]
            records = await self._name_all(staged, lease)
        imported: builtins.list[Image] = []
        for (image, entry), record in zip(staged, records, strict=True):
            self.remember(entry.manifest_descriptor.digest, entry.manifest)
            self.remember(entry.config_descriptor.digest, entry.config)
            if progress:
                for i, layer in enumerate(image.layers):
                    progress(
                        LayerProgress(
                            reference=image.name,
                            index=i,
                            digest=layer.digest,
                            state="done",
                            done=layer.size,
                            total=layer.size,
                        )
                    )
            imported.append(msgspec.structs.replace(image, created_at=record.created_at))
        return imported

    async def _name_all(
        self, staged: Sequence[tuple[Image, ArchiveImage]], lease: str
    ) -> builtins.list[ImageRecord]:
        """Create (or re-point) every staged image's name; if one fails, put the names
        back as they were (removed, or pointing at their old targets) and raise."""
        previous: dict[str, ImageRecord | None] = {}
        for image, _ in staged:
            if image.name not in previous:
                try:
                    previous[image.name] = await self.store.get_image(image.name)
                except NotFound:
                    previous[image.name] = None
        records: builtins.list[ImageRecord] = []
        try:
            for image, _ in staged:
                records.append(await self.store.create_image(image.name, image.target, lease=lease))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._restore_names(previous)
            raise
        return records

    async def _restore_names(self, previous: dict[str, ImageRecord | None]) -> None:
        for name, old in previous.items():
            with contextlib.suppress(ContainerdActorsError):
                if old is None:
                    await self.store.delete_image(name, sync=False)
                else:
                    await self.store.create_image(name, old.target, old.labels)

    def _archive_name(self, entry: ArchiveImage, base_name: str | None) -> str:
        if entry.name:
            return normalize_name(entry.name)
        if entry.tag and base_name:
            return normalize_name(f"{base_name}:{entry.tag}")
        if entry.tag and ("/" in entry.tag or ":" in entry.tag):
            return normalize_name(entry.tag)
        raise InvalidArgument(
            "an image in the archive has no name (only the tag "
            f"{(entry.tag or '')[:64]!r}): pass base_name",
            local=True,
        )

    async def _stage_one(
        self,
        archive: ImageArchive,
        entry: ArchiveImage,
        name: str,
        lease: str,
        progress: ProgressCallback | None,
    ) -> tuple[Image, ArchiveImage]:
        """One image's blobs (verified) and snapshots, under ``lease``; no name yet."""
        image = image_of(
            name,
            entry.target,
            entry.manifest_descriptor,
            entry.manifest,
            entry.config_descriptor,
            entry.config,
        )
        snapshotter = await self.store.snapshotter()
        for i, layer in enumerate(image.layers):
            if progress:
                progress(
                    LayerProgress(
                        reference=name,
                        index=i,
                        digest=layer.digest,
                        state="extracting",
                        done=0,
                        total=layer.size,
                    )
                )
            await self.store.ingest(layer, _archive_source(archive, layer), lease=lease)
        config_bytes = await trio.to_thread.run_sync(
            lambda: archive.read_blob(entry.config_descriptor, limit=MAX_CONFIG_BYTES)
        )
        await self.store.ingest(
            entry.config_descriptor,
            bytes_source(config_bytes),
            labels=config_gc_labels(snapshotter, image.chain_id),
            lease=lease,
        )
        manifest_bytes = await trio.to_thread.run_sync(
            lambda: archive.read_blob(entry.manifest_descriptor)
        )
        await self.store.ingest(
            entry.manifest_descriptor,
            bytes_source(manifest_bytes),
            labels=manifest_gc_labels(entry.config_descriptor, list(entry.manifest.layers)),
            lease=lease,
        )
        for index_desc in entry.indexes:  # every level: index -> index -> manifest

            def read_index(desc: Descriptor = index_desc) -> bytes:
                return archive.read_blob(desc)

            index_bytes = await trio.to_thread.run_sync(read_index)
            index = decode_manifest_or_index(index_bytes, index_desc.media_type)
            if isinstance(index, Index):
                await self.store.ingest(
                    index_desc,
                    bytes_source(index_bytes),
                    labels=index_gc_labels(index.manifests),
                    lease=lease,
                )
                self.remember(index_desc.digest, index)
        await self.unpack(image, lease=lease)
        return image, entry

    async def export(
        self, names: str | Sequence[str], destination: str | os.PathLike[str] | BinaryIO
    ) -> None:
        """Write the images (this platform's manifest each) as an OCI image-layout tar.

        The archive also has a docker ``manifest.json``, so ``docker load`` reads it; each
        entry's index annotations carry the full name (``io.containerd.image.name``) and
        the tag. Blobs are verified on the way out (DataLoss if the store's bytes differ).
        """
        wanted = [names] if isinstance(names, str) else list(names)
        if not wanted:
            raise InvalidArgument("export needs at least one image name", local=True)
        images = [await self.get(name) for name in wanted]
        with tempfile.TemporaryDirectory(prefix="actors-export-") as scratch:
            files: dict[str, Path] = {}
            blobs: list[Descriptor] = []
            for image in images:
                for desc in (image.manifest, image.config_descriptor, *image.layers):
                    if desc.digest not in files:
                        path = Path(scratch) / desc.digest.replace(":", "-")
                        await self._copy_blob(desc.digest, path)
                        files[desc.digest] = path
                        blobs.append(desc)
            manifests = [named_descriptor(image.manifest, image.name) for image in images]
            docker = [
                DockerSaveEntry(
                    config=image.config_descriptor, layers=list(image.layers), names=[image.name]
                )
                for image in images
            ]

            def open_blob(desc: Descriptor) -> BinaryIO:
                return open(files[desc.digest], "rb")

            def write(out: BinaryIO) -> None:
                write_oci_archive(out, manifests, blobs=blobs, open_blob=open_blob, docker=docker)

            if isinstance(destination, str | os.PathLike):
                target = Path(destination)
                partial = target.with_name(target.name + ".partial")

                def write_file() -> None:
                    try:
                        with open(partial, "wb") as out:
                            write(out)
                        os.replace(partial, target)
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(partial)

                await trio.to_thread.run_sync(write_file)
            else:
                stream = destination
                await trio.to_thread.run_sync(lambda: write(stream))

    async def _copy_blob(self, digest: str, path: Path) -> None:
        # Local scratch file; the writes are small and the reads are the slow part.
        with path.open("wb") as out:
            async with self.store.services.content_read(digest) as stream:
                async for chunk in stream:
                    out.write(chunk.data)


class _ArchiveBlob:
    """A blob of an archive read in a worker thread, 1 MiB at a time (verified at EOF)."""

    def __init__(self, archive: ImageArchive, desc: Descriptor) -> None:
        self._archive = archive
        self._desc = desc
        self._stream: IO[bytes] | None = None

    def __aiter__(self) -> _ArchiveBlob:
        return self

    async def __anext__(self) -> bytes:
        if self._stream is None:
            self._stream = await trio.to_thread.run_sync(self._archive.open_blob, self._desc)
        stream = self._stream
        chunk = await trio.to_thread.run_sync(stream.read, _COPY_CHUNK)
        if not chunk:
            stream.close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if self._stream is not None:
            self._stream.close()


def _archive_source(archive: ImageArchive, desc: Descriptor) -> _ArchiveBlob:
    return _ArchiveBlob(archive, desc)
