"""OCI and Docker schema 2 documents: media types, msgspec Structs, and bounded decoding.

Decoding validates what a later step relies on, so a hostile registry or archive is refused
here with :class:`~actors.errors.InvalidArgument` and a message naming the problem:

- a manifest or index larger than :data:`MAX_MANIFEST_BYTES` (4 MiB), a config larger than
  :data:`MAX_CONFIG_BYTES`;
- more than :data:`MAX_LAYERS` (127) layers, docker's limit for overlay, or more than
  :data:`MAX_INDEX_ENTRIES` manifests in an index;
- a ``mediaType`` field that contradicts the descriptor it was fetched through (a manifest
  that says it is an index, or the reverse), schema 1 manifests, malformed digests, negative
  sizes, a config whose ``rootfs.diff_ids`` do not match the manifest's layer count.

API::

    doc = decode_manifest_or_index(data, media_type)   # Manifest | Index
    config = decode_config(data)                       # ImageConfig
    config.config.entrypoint, config.rootfs.diff_ids, config.platform
    encode(doc)                                        # canonical JSON bytes
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from ..errors import InvalidArgument, Unimplemented
from ._digest import parse_digest
from ._platform import Platform

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LAYER_FOREIGN",
    "DOCKER_LAYER_FOREIGN_GZIP",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1",
    "DOCKER_SCHEMA1_SIGNED",
    "INDEX_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "MAX_CONFIG_BYTES",
    "MAX_INDEX_ENTRIES",
    "MAX_LAYERS",
    "MAX_MANIFEST_BYTES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "ContainerConfig",
    "Descriptor",
    "History",
    "ImageConfig",
    "Index",
    "Manifest",
    "RootFS",
    "decode_config",
    "decode_manifest_or_index",
    "encode",
    "is_index_type",
    "is_layer_type",
    "is_manifest_type",
    "strip_parameters",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_DOCKER_LAYER_TYPES = frozenset(
    {DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN, DOCKER_LAYER_FOREIGN_GZIP}
)
# What a resolve accepts, in containerd's order; */* lets old registries answer at all.
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])

# containerd refuses manifests over 4*1048*1048 bytes; a round 4 MiB is as generous.
MAX_MANIFEST_BYTES = 4 << 20
# Configs carry history and labels; real ones are kilobytes.
MAX_CONFIG_BYTES = 8 << 20
# Docker's limit for overlay (its lowerdir option runs out beyond this).
MAX_LAYERS = 127
MAX_INDEX_ENTRIES = 1024


def strip_parameters(media_type: str) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return media_type.split(";", 1)[0].strip().lower()


def is_index_type(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def is_manifest_type(media_type: str) -> bool:
    return media_type in MANIFEST_TYPES


def is_layer_type(media_type: str) -> bool:
    """containerd's rule: any OCI layer type, or a Docker layer type (suffixes stripped)."""
    if media_type.startswith("application/vnd.oci.image.layer."):
        return True
    return media_type.split("+", 1)[0] in _DOCKER_LAYER_TYPES


class Descriptor(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    media_type: str
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = None


class Manifest(msgspec.Struct, rename="camel", omit_defaults=True):
    schema_version: int
    config: Descriptor
    layers: list[Descriptor] = []
    media_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None


class Index(msgspec.Struct, rename="camel", omit_defaults=True):
    schema_version: int
    manifests: list[Descriptor] = []
    media_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None


class ContainerConfig(msgspec.Struct, rename="pascal", omit_defaults=True):
    """The run-time part of an image config (docker's capitalised JSON keys)."""

    user: str = ""
    exposed_ports: dict[str, Any] | None = None
    env: list[str] | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    volumes: dict[str, Any] | None = None
    working_dir: str = ""
    labels: dict[str, str] | None = None
    stop_signal: str = ""
    args_escaped: bool = False


class RootFS(msgspec.Struct, omit_defaults=True):
    type: str
    diff_ids: list[str] = []


class History(msgspec.Struct, omit_defaults=True):
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False


class ImageConfig(msgspec.Struct, omit_defaults=True):
    architecture: str = ""
    os: str = ""
    rootfs: RootFS = msgspec.field(default_factory=lambda: RootFS(type="layers"))
    os_version: str = msgspec.field(default="", name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")
    variant: str = ""
    created: str | None = None
    author: str | None = None
    config: ContainerConfig = msgspec.field(default_factory=ContainerConfig)
    history: list[History] | None = None

    @property
    def platform(self) -> Platform:
        return Platform(os=self.os, architecture=self.architecture, variant=self.variant)


_T = TypeVar("_T")
_encoder = msgspec.json.Encoder()


def encode(document: Manifest | Index | ImageConfig | Descriptor) -> bytes:
    """Compact JSON for a document we write ourselves (archives, tests)."""
    return _encoder.encode(document)


def _check_size(data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise InvalidArgument(
            f"{what} is {len(data)} bytes, over the {limit >> 20} MiB limit", local=True
        )


def _check_descriptor(desc: Descriptor, what: str) -> None:
    parse_digest(desc.digest)
    if desc.size < 0:
        raise InvalidArgument(f"{what} {desc.digest} has a negative size", local=True)
    if not desc.media_type:
        raise InvalidArgument(f"{what} {desc.digest} has no mediaType", local=True)


def _sniff(data: bytes) -> str:
    """The document type of a body served with a generic Content-Type."""
    try:
        probe = msgspec.json.decode(data, type=dict[str, Any])
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"manifest is not valid JSON: {exc}", local=True) from None
    declared = probe.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if probe.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if "manifests" in probe:
        return OCI_INDEX
    if "config" in probe or "layers" in probe:
        return OCI_MANIFEST
    raise InvalidArgument("document is neither an image manifest nor an index", local=True)


def decode_manifest_or_index(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Decode a manifest or index fetched as ``media_type`` (None or generic: sniffed)."""
    _check_size(data, MAX_MANIFEST_BYTES, "manifest")
    kind = strip_parameters(media_type) if media_type else ""
    if kind not in INDEX_TYPES and kind not in MANIFEST_TYPES:
        if kind in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
            pass
        elif kind in ("", "application/json", "text/plain", "application/octet-stream"):
            kind = _sniff(data)
        else:
            raise InvalidArgument(f"unsupported manifest media type {kind!r}", local=True)
    if kind in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise Unimplemented(
            "Docker schema 1 manifests are not supported (push the image again with a "
            "current client)",
            local=True,
        )
    if kind in INDEX_TYPES:
        return _decode_index(data, kind)
    if kind in MANIFEST_TYPES:
        return _decode_manifest(data, kind)
    raise InvalidArgument(f"unsupported manifest media type {kind!r}", local=True)


def _decode_json(data: bytes, cls: type[_T], what: str) -> _T:
    try:
        return msgspec.json.decode(data, type=cls)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"invalid {what}: {exc}", local=True) from None
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}", local=True) from None


def _check_declared(declared: str | None, expected: str, what: str) -> None:
    # containerd refuses a body whose own mediaType contradicts how it was fetched.
    if declared is None or declared == expected:
        return
    if (declared in INDEX_TYPES) != (expected in INDEX_TYPES) or declared not in (
        INDEX_TYPES | MANIFEST_TYPES
    ):
        raise InvalidArgument(
            f"{what} declares mediaType {declared!r} but was served as {expected!r}", local=True
        )


def _decode_manifest(data: bytes, kind: str) -> Manifest:
    manifest = _decode_json(data, Manifest, "image manifest")
    if manifest.schema_version != 2:
        raise InvalidArgument(
            f"image manifest has schemaVersion {manifest.schema_version}, expected 2", local=True
        )
    _check_declared(manifest.media_type, kind, "image manifest")
    if len(manifest.layers) > MAX_LAYERS:
        raise InvalidArgument(
            f"image manifest lists {len(manifest.layers)} layers, over the limit of {MAX_LAYERS}",
            local=True,
        )
    _check_descriptor(manifest.config, "config")
    for layer in manifest.layers:
        _check_descriptor(layer, "layer")
    if manifest.media_type is None:
        manifest.media_type = kind
    return manifest


def _decode_index(data: bytes, kind: str) -> Index:
    index = _decode_json(data, Index, "image index")
    if index.schema_version != 2:
        raise InvalidArgument(
            f"image index has schemaVersion {index.schema_version}, expected 2", local=True
        )
    _check_declared(index.media_type, kind, "image index")
    if len(index.manifests) > MAX_INDEX_ENTRIES:
        raise InvalidArgument(
            f"image index lists {len(index.manifests)} manifests, over the limit of "
            f"{MAX_INDEX_ENTRIES}",
            local=True,
        )
    for entry in index.manifests:
        _check_descriptor(entry, "index entry")
    if index.media_type is None:
        index.media_type = kind
    return index


def decode_config(data: bytes, manifest: Manifest | None = None) -> ImageConfig:
    """Decode an image config; with ``manifest``, check its diff_ids match the layers."""
    _check_size(data, MAX_CONFIG_BYTES, "image config")
    config = _decode_json(data, ImageConfig, "image config")
    if config.rootfs.type != "layers":
        raise InvalidArgument(
            f"image config has rootfs type {config.rootfs.type!r}, expected 'layers'", local=True
        )
    if len(config.rootfs.diff_ids) > MAX_LAYERS:
        raise InvalidArgument(
            f"image config lists {len(config.rootfs.diff_ids)} layers, over the limit of "
            f"{MAX_LAYERS}",
            local=True,
        )
    for diff_id in config.rootfs.diff_ids:
        parse_digest(diff_id)
    if manifest is not None:
        layers = [d for d in manifest.layers if is_layer_type(d.media_type)]
        if len(layers) != len(config.rootfs.diff_ids):
            raise InvalidArgument(
                f"image config lists {len(config.rootfs.diff_ids)} diff IDs but the manifest "
                f"has {len(layers)} layers",
                local=True,
            )
    return config
