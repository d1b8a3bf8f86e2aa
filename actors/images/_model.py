"""The images API's value types: :class:`Image` and pull/import progress (no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec
import trio

from ..errors import InvalidArgument
from ._media import Descriptor, ImageConfig, Manifest, is_layer_type
from ._unpack import chain_ids

__all__ = ["Image", "LayerProgress", "LayerState", "ProgressCallback", "bytes_source", "image_of"]

LayerState = Literal["waiting", "downloading", "exists", "extracting", "done"]


class LayerProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One layer's progress during a pull or import.

    ``state`` goes ``waiting`` -> ``downloading`` (``done`` of ``total`` bytes) or
    ``exists`` (the blob was in the store) -> ``extracting`` -> ``done``; a layer that was
    unpacked already goes straight to ``done``.
    """

    reference: str
    index: int
    digest: str
    state: LayerState
    done: int
    total: int


ProgressCallback = Callable[[LayerProgress], None]


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """An image in containerd's store: its name, documents and snapshot chain.

    Attributes:
        name: the normalised reference (``docker.io/library/busybox:latest``).
        target: what the name points at (an index or a manifest).
        manifest: the manifest for this host's platform.
        config_descriptor: the config blob (its digest is docker's IMAGE ID).
        config: the decoded image config (Entrypoint, Cmd, Env, ... in ``config.config``).
        layers: layer descriptors, base first.
        chain_id: the top chain ID: the parent of every container snapshot.
        created_at: when the image record was created (seconds since the epoch).
    """

    name: str
    target: Descriptor
    manifest: Descriptor
    config_descriptor: Descriptor
    config: ImageConfig
    layers: tuple[Descriptor, ...]
    chain_id: str
    created_at: float = 0.0

    @property
    def digest(self) -> str:
        """The digest the name points at (docker's RepoDigest)."""
        return self.target.digest

    @property
    def id(self) -> str:
        """The config digest (what ``docker images`` shows as IMAGE ID)."""
        return self.config_descriptor.digest

    @property
    def size(self) -> int:
        """Bytes of the image's blobs for this platform (compressed layers + documents)."""
        return (
            sum(layer.size for layer in self.layers)
            + self.config_descriptor.size
            + self.manifest.size
        )


def image_of(
    name: str,
    target: Descriptor,
    manifest_desc: Descriptor,
    manifest: Manifest,
    config_desc: Descriptor,
    config: ImageConfig,
    created_at: float = 0.0,
) -> Image:
    layers = tuple(d for d in manifest.layers if is_layer_type(d.media_type))
    diff_ids = config.rootfs.diff_ids
    if not layers or len(layers) != len(diff_ids):
        raise InvalidArgument(
            f"image {name}: {len(layers)} layers but {len(diff_ids)} diff IDs in its config",
            local=True,
        )
    return Image(
        name=name,
        target=Descriptor(media_type=target.media_type, digest=target.digest, size=target.size),
        manifest=Descriptor(
            media_type=manifest_desc.media_type,
            digest=manifest_desc.digest,
            size=manifest_desc.size,
        ),
        config_descriptor=config_desc,
        config=config,
        layers=layers,
        chain_id=chain_ids(diff_ids)[-1],
        created_at=created_at,
    )


def bytes_source(data: bytes) -> Callable[[int], _Chunks]:
    return lambda offset: _Chunks([data[offset:]])


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)
