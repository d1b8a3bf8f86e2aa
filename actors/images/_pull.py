"""Pull orchestration: registry -> containerd content -> snapshots -> image record.

Under one lease (so a failure or a crash leaves nothing that outlives it):

1. resolve the reference (index, this platform's manifest, config: all verified);
2. one Snapshots.List finds how many bottom layers are unpacked already;
3. layers are fetched concurrently (bounded), each straight into ``Content.Write`` (a present
   blob is skipped when the Write's opening STAT answers AlreadyExists, or, for a layer of
   one Write message, after one Content.Info; an interrupted ingest resumes with ``Range``),
   while the unpacker applies them in order as they land: fetching layer n+1 overlaps
   applying layer n. containerd checks each blob's digest and size at commit (we do not
   hash the bytes a second time), and our unpack checks each layer's diff ID;
4. meanwhile (from the start, they are in memory) config (labelled with the snapshot chain),
   manifest (labelled with config and layers) and index (labelled with its manifests) are
   written, so containerd's GC keeps them all through the image record;
5. Images.Create (Update when the name exists), then the lease goes.

A failure cancels the other downloads; the lease is deleted, so what was written becomes
garbage for containerd's collector and no image record exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
import trio

from ..errors import ContainerdActorsError
from ._auth import Credentials
from ._dockerconfig import DockerConfig
from ._ingest import CHUNK_SIZE
from ._media import Descriptor
from ._model import (
    Image,
    LayerProgress,
    LayerState,
    ProgressCallback,
    bytes_source,
    image_of,
)
from ._registry import BlobStream, open_registry
from ._types import config_gc_labels, index_gc_labels, manifest_gc_labels
from ._unpack import chain_ids

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._media import ImageConfig, Index, Manifest
    from ._platform import Platform
    from ._store import ContentStore

__all__ = ["pull_image"]


class _Tracker:
    def __init__(self, reference: str, layers: tuple[Descriptor, ...], cb: ProgressCallback | None):
        self.reference = reference
        self.layers = layers
        self.cb = cb
        self.done = [0] * len(layers)

    def report(self, index: int, state: LayerState, done: int | None = None) -> None:
        if done is not None:
            self.done[index] = done
        if self.cb is None:
            return
        layer = self.layers[index]
        self.cb(
            LayerProgress(
                reference=self.reference,
                index=index,
                digest=layer.digest,
                state=state,
                done=self.done[index],
                total=layer.size,
            )
        )


class _Counted:
    """A blob stream that reports the bytes received (the offset of a resume included)."""

    def __init__(self, stream: BlobStream, tracker: _Tracker, index: int) -> None:
        self._stream = stream
        self._tracker = tracker
        self._index = index

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._stream.__anext__()
        self._tracker.report(self._index, "downloading", self._stream.received)
        return chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a caller should see: the first of ours (not Cancelled) in the group."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    ours = [e for e in leaves if isinstance(e, ContainerdActorsError)]
    others = [e for e in leaves if not isinstance(e, ContainerdActorsError | trio.Cancelled)]
    if others:
        return others[0] if len(others) == 1 and not ours else group
    return ours[0] if ours else group


async def pull_image(
    store: ContentStore,
    reference: str,
    *,
    platform: Platform,
    credentials: Credentials | DockerConfig | None,
    insecure: Iterable[str],
    progress: ProgressCallback | None,
    max_concurrent: int,
    remember: Callable[[str, Manifest | Index | ImageConfig], None],
) -> Image:
    async with open_registry(
        reference, credentials=credentials, insecure=insecure, platform=platform
    ) as registry:
        resolved = await registry.resolve()
        name = resolved.name
        image = image_of(
            name,
            resolved.target,
            resolved.manifest_descriptor,
            resolved.manifest,
            resolved.config_descriptor,
            resolved.config,
        )
        diff_ids = resolved.config.rootfs.diff_ids
        ids = chain_ids(diff_ids)
        layers = image.layers
        tracker = _Tracker(name, layers, progress)
        for i in range(len(layers)):
            tracker.report(i, "waiting")
        snapshotter = await store.snapshotter()
        unpacked = await store.unpacked_layers(diff_ids, snapshotter=snapshotter)
        limiter = trio.CapacityLimiter(max_concurrent)
        landed = [trio.Event() for _ in layers]

        async def fetch(index: int, lease: str) -> None:
            layer = layers[index]
            try:
                result = await store.ingest(
                    layer,
                    # containerd checks the digest at commit: not hashed here too.
                    lambda offset: _Counted(
                        registry.blob(layer, offset, check_digest=False), tracker, index
                    ),
                    lease=lease,
                    # A layer of more than one Write message opens with a STAT, whose answer
                    # (AlreadyExists when the blob is here) makes Content.Info redundant. A
                    # small one is read before its single COMMIT: Info first spares that
                    # download when the blob is here.
                    check_present=layer.size <= CHUNK_SIZE,
                )
            finally:
                limiter.release_on_behalf_of(index)
            if result.present:
                tracker.report(index, "exists", layer.size)
            landed[index].set()

        async def documents(lease: str) -> None:
            # In memory, so written while the layers download (not after them, on the pull's
            # critical path): each goes as one COMMIT, whose AlreadyExists (the blob is here;
            # containerd adds it to the lease) replaces a Content.Info; their labels are then
            # set with one Content.Update. Their GC labels may name layers and snapshots that
            # do not exist yet; the lease holds everything until the image record does.
            await store.ingest(
                resolved.config_descriptor,
                bytes_source(resolved.config_bytes),
                labels=config_gc_labels(snapshotter, ids[-1]),
                lease=lease,
                check_present=False,
            )
            await store.ingest(
                resolved.manifest_descriptor,
                bytes_source(resolved.manifest_bytes),
                labels=manifest_gc_labels(
                    resolved.config_descriptor, list(resolved.manifest.layers)
                ),
                lease=lease,
                check_present=False,
            )
            if resolved.index is not None and resolved.index_bytes is not None:
                await store.ingest(
                    resolved.target,
                    bytes_source(resolved.index_bytes),
                    labels=index_gc_labels(resolved.index.manifests),
                    lease=lease,
                    check_present=False,
                )
            # index -> index -> manifest: every inner index too, or GC drops what it lists.
            for desc, data, inner in resolved.nested:
                await store.ingest(
                    desc,
                    bytes_source(data),
                    labels=index_gc_labels(inner.manifests),
                    lease=lease,
                    check_present=False,
                )

        async with store.open_lease() as lease:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(documents, lease)

                    async def feed() -> None:
                        # Bottom layer first: the unpacker needs the layers in order, so
                        # downloads take their slots in that order too.
                        for index in range(len(layers)):
                            await limiter.acquire_on_behalf_of(index)
                            nursery.start_soon(fetch, index, lease)

                    nursery.start_soon(feed)
                    for index in range(len(layers)):
                        await landed[index].wait()
                        if index < unpacked:
                            tracker.report(index, "done", layers[index].size)
                            continue
                        tracker.report(index, "extracting", layers[index].size)
                        await store.apply_layer(
                            layers[index], diff_ids, index, snapshotter=snapshotter, lease=lease
                        )
                        tracker.report(index, "done")
            except BaseExceptionGroup as group:
                raise _single_error(group) from None
            record = await store.create_image(name, resolved.target, lease=lease)
    remember(resolved.manifest_descriptor.digest, resolved.manifest)
    remember(resolved.config_descriptor.digest, resolved.config)
    if resolved.index is not None:
        remember(resolved.target.digest, resolved.index)
    for desc, _, inner in resolved.nested:
        remember(desc.digest, inner)
    return msgspec.structs.replace(image, created_at=record.created_at)
