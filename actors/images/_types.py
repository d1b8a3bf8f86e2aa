"""The image store's value types, validation and GC labels (no I/O)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from typing import Final, Protocol

import msgspec

from ..errors import InvalidArgument
from ._pb import descriptor_pb2

__all__ = [
    "GC_REF_CONTENT",
    "GC_REF_SNAPSHOT",
    "BlobSource",
    "ContentInfo",
    "Descriptor",
    "DescriptorLike",
    "ImageRecord",
    "IngestResult",
    "Lease",
    "config_gc_labels",
    "index_gc_labels",
    "manifest_gc_labels",
    "validate_descriptor",
    "validate_digest",
    "validate_labels",
]

GC_REF_CONTENT: Final = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT: Final = "containerd.io/gc.ref.snapshot"

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


def validate_descriptor(descriptor: DescriptorLike) -> Descriptor:
    desc = Descriptor.of(descriptor)
    validate_digest(desc.digest)
    if not isinstance(desc.size, int) or isinstance(desc.size, bool) or desc.size < 0:
        raise InvalidArgument(f"blob {desc.digest}: invalid size {desc.size!r}", local=True)
    if not desc.media_type:
        raise InvalidArgument(f"blob {desc.digest}: empty media type", local=True)
    return desc


def validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise InvalidArgument(f"invalid label {key!r}={value!r}", local=True)
        if len(key) + len(value) > 4096:
            raise InvalidArgument(f"label {key!r} is longer than 4096 bytes", local=True)
        result[key] = value
    return result


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
