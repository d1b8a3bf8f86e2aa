"""Image archives: read OCI image-layout tars and ``docker save`` tars, write OCI tars.

Sans-IO over seekable binary file objects (blocking reads: call from ``trio.to_thread``).

Reading (:func:`read_archive`) accepts

- an OCI image layout (``oci-layout`` version 1.0.0, ``index.json``, ``blobs/<alg>/<hex>``);
  Docker >= 25 ``docker save`` output is one too. Image names come from the
  ``io.containerd.image.name`` annotation, tags from ``org.opencontainers.image.ref.name``.
  An entry that is itself an index is resolved to ``platform`` (default: the host's).
- a legacy ``docker save`` tar (``manifest.json`` with ``Config``, ``RepoTags``, ``Layers``):
  we make one Docker schema 2 manifest per entry (layers uncompressed or gzip, detected by
  magic bytes), so both kinds come out the same way.

and refuses with :class:`~actors.errors.InvalidArgument`: a file that is not a tar, a tar that
is not an image, member names that are absolute or contain ``..``, links where a blob should
be, documents over the limits of :mod:`._media`. Every blob is verified against its
descriptor while it is read (:class:`~actors.errors.DataLoss` on mismatch).

API::

    archive = read_archive(fileobj)
    for image in archive.images:         # ArchiveImage(name, tag, target, manifest, config, ...)
        archive.read_blob(image.config_descriptor)        # bytes, verified
        with archive.open_blob(layer) as stream: ...      # verifying reader

    write_oci_archive(out, [named_descriptor(target, "docker.io/library/x:1")],
                      blobs=[...descriptors...], open_blob=lambda desc: reader,
                      docker=[DockerSaveEntry(config, layers, ["docker.io/library/x:1"])])
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable, Sequence
from typing import IO, BinaryIO, Literal, TypeVar

import msgspec

from ..errors import InvalidArgument, NotFound, Unimplemented
from ._digest import BlobVerifier, digest_of, parse_digest
from ._media import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MAX_CONFIG_BYTES,
    MAX_LAYERS,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    decode_config,
    decode_manifest_or_index,
    encode,
    is_layer_type,
)
from ._platform import Platform, choose_manifest, host_platform
from ._reference import Reference, parse_reference

__all__ = [
    "ArchiveImage",
    "DockerSaveEntry",
    "ImageArchive",
    "named_descriptor",
    "read_archive",
    "write_oci_archive",
]

_T = TypeVar("_T")
_LAYOUT_VERSION = "1.0.0"
_MAX_JSON = MAX_MANIFEST_BYTES
_READ_CHUNK = 1 << 20


class ArchiveImage(msgspec.Struct, frozen=True):
    """One image of an archive. ``name`` is the normalised reference when the archive names
    one; ``tag`` is the raw ``org.opencontainers.image.ref.name`` of an OCI layout (by
    convention a bare tag such as ``latest``; then ``name`` is None and the importer picks
    the repository), or the tag of a docker ``RepoTags`` entry."""

    name: str | None
    tag: str | None
    target: Descriptor
    manifest_descriptor: Descriptor
    manifest: Manifest
    config_descriptor: Descriptor
    config: ImageConfig
    layers: list[Descriptor]
    # Every index from ``target`` down to the manifest (index -> index -> manifest), top
    # first: each is imported with its GC labels.
    indexes: tuple[Descriptor, ...] = ()


class _LayoutMarker(msgspec.Struct):
    imageLayoutVersion: str = ""


class _DockerEntry(msgspec.Struct, rename="pascal"):
    config: str
    layers: list[str]
    repo_tags: list[str] | None = None


class _VerifyingReader(io.RawIOBase):
    """Reads a member and fails at EOF (or past the size) unless it matches the descriptor."""

    def __init__(self, raw: IO[bytes], descriptor: Descriptor) -> None:
        super().__init__()
        self._raw = raw
        self._verifier = BlobVerifier(
            descriptor.digest, descriptor.size, what=f"archive blob {descriptor.digest}"
        )
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        if not data:
            if not self._done:
                self._done = True
                self._verifier.finish()
            return 0
        self._verifier.update(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _member_name(name: str) -> str:
    """A member name made canonical; absolute names and ``..`` are refused."""
    if name.startswith("/") or "\\" in name:
        raise InvalidArgument(f"archive member {name[:200]!r} has an absolute path", local=True)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(
            f"archive member {name[:200]!r} escapes the archive (contains '..')", local=True
        )
    return "/".join(parts)


class ImageArchive:
    """An opened archive. Keep the file object open while you read blobs."""

    def __init__(self, tar: tarfile.TarFile, kind: Literal["oci", "docker"]) -> None:
        self._tar = tar
        self.kind = kind
        self.images: list[ArchiveImage] = []
        self._members: dict[str, tarfile.TarInfo] = {}
        # Documents we made ourselves (docker save manifests) by digest.
        self._synthetic: dict[str, bytes] = {}
        # Blobs of a docker save tar live at arbitrary paths: digest -> member name.
        self._paths: dict[str, str] = {}
        for member in tar.getmembers():
            self._members[_member_name(member.name)] = member

    def _member(self, path: str) -> tarfile.TarInfo | None:
        return self._members.get(_member_name(path))

    def _blob_path(self, digest: str) -> str:
        if digest in self._paths:
            return self._paths[digest]
        algorithm, encoded = parse_digest(digest)
        return f"blobs/{algorithm}/{encoded}"

    def has_blob(self, descriptor: Descriptor) -> bool:
        return descriptor.digest in self._synthetic or (
            self._member(self._blob_path(descriptor.digest)) is not None
        )

    def _open_member(self, path: str, what: str) -> IO[bytes]:
        member = self._member(path)
        if member is None:
            raise NotFound(f"archive has no {what} ({path[:200]})", local=True)
        if not member.isfile():
            raise InvalidArgument(
                f"archive member {path[:200]!r} is not a regular file", local=True
            )
        stream = self._tar.extractfile(member)
        assert stream is not None  # regular files always have one
        return stream

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        """A reader for the blob that raises DataLoss at EOF when it does not match."""
        if descriptor.digest in self._synthetic:
            raw: IO[bytes] = io.BytesIO(self._synthetic[descriptor.digest])
        else:
            raw = self._open_member(self._blob_path(descriptor.digest), f"blob {descriptor.digest}")
        return io.BufferedReader(_VerifyingReader(raw, descriptor))

    def read_blob(self, descriptor: Descriptor, *, limit: int = _MAX_JSON) -> bytes:
        if descriptor.size > limit:
            raise InvalidArgument(
                f"archive blob {descriptor.digest} is {descriptor.size} bytes, over the "
                f"{limit >> 20} MiB limit",
                local=True,
            )
        with self.open_blob(descriptor) as stream:
            return stream.read()

    def _read_json_member(self, path: str, what: str) -> bytes:
        member = self._member(path)
        if member is not None and member.size > _MAX_JSON:
            raise InvalidArgument(f"archive {what} is over the size limit", local=True)
        with self._open_member(path, what) as stream:
            return stream.read()


def read_archive(fileobj: BinaryIO, *, platform: Platform | None = None) -> ImageArchive:
    """Open an OCI layout tar or a ``docker save`` tar and decode every image in it."""
    try:
        # The archive outlives this call: it is closed with the file object.
        tar = tarfile.open(fileobj=fileobj, mode="r:*")  # noqa: SIM115
    except (tarfile.ReadError, EOFError, OSError):
        raise InvalidArgument(
            "not an image archive: the file is not a tar archive", local=True
        ) from None
    want = (platform or host_platform()).normalized()
    names = {_member_name(m.name) for m in tar.getmembers()}
    if "index.json" in names:
        archive = ImageArchive(tar, "oci")
        _read_oci(archive, want)
    elif "manifest.json" in names:
        archive = ImageArchive(tar, "docker")
        _read_docker(archive)
    else:
        raise InvalidArgument(
            "not an image archive: it has neither index.json (OCI image layout) nor "
            "manifest.json (docker save)",
            local=True,
        )
    if not archive.images:
        raise InvalidArgument("image archive contains no images", local=True)
    return archive


def _decode(data: bytes, cls: type[_T], what: str) -> _T:
    try:
        return msgspec.json.decode(data, type=cls)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidArgument(f"archive {what} is malformed: {exc}", local=True) from None


def _read_oci(archive: ImageArchive, want: Platform) -> None:
    if archive._member("oci-layout") is not None:
        data = archive._read_json_member("oci-layout", "oci-layout")
        marker = _decode(data, _LayoutMarker, "oci-layout")
        if marker.imageLayoutVersion != _LAYOUT_VERSION:
            raise Unimplemented(
                f"unsupported OCI image layout version {marker.imageLayoutVersion[:40]!r}",
                local=True,
            )
    data = archive._read_json_member("index.json", "index.json")
    try:
        root = decode_manifest_or_index(data, OCI_INDEX)
    except InvalidArgument as exc:
        raise InvalidArgument(f"archive index.json: {exc.message}", local=True) from None
    if not isinstance(root, Index):
        raise InvalidArgument("archive index.json is not an image index", local=True)
    for entry in root.manifests:
        annotations = entry.annotations or {}
        name = annotations.get(ANNOTATION_IMAGE_NAME)
        tag = annotations.get(ANNOTATION_REF_NAME)
        # A ref name with "/" or ":" cannot be a bare tag: it names the image itself.
        named = tag is not None and ("/" in tag or ":" in tag)
        full = _full_name(name) if name else _full_name(tag) if named else None
        archive.images.append(_resolve_entry(archive, entry, want, full, tag))


def _full_name(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(parse_reference(text))
    except InvalidArgument:
        return None


def _resolve_entry(
    archive: ImageArchive, entry: Descriptor, want: Platform, name: str | None, tag: str | None
) -> ArchiveImage:
    descriptor = entry
    indexes: list[Descriptor] = []
    for _ in range(3):
        doc = decode_manifest_or_index(archive.read_blob(descriptor), descriptor.media_type)
        if isinstance(doc, Manifest):
            config_bytes = archive.read_blob(doc.config, limit=MAX_CONFIG_BYTES)
            config = decode_config(config_bytes, doc)
            return ArchiveImage(
                name=name,
                tag=tag,
                target=entry,
                manifest_descriptor=descriptor,
                manifest=doc,
                config_descriptor=doc.config,
                config=config,
                layers=[d for d in doc.layers if is_layer_type(d.media_type)],
                indexes=tuple(indexes),
            )
        indexes.append(descriptor)
        descriptor = choose_manifest(doc.manifests, want, name=name or tag or entry.digest)
    raise InvalidArgument("archive indexes are nested too deep", local=True)


def _read_docker(archive: ImageArchive) -> None:
    parsed = _decode(
        archive._read_json_member("manifest.json", "manifest.json"),
        list[_DockerEntry],
        "manifest.json",
    )
    for entry in parsed:
        if len(entry.layers) > MAX_LAYERS:
            raise InvalidArgument(
                f"archive image lists {len(entry.layers)} layers, over the limit of {MAX_LAYERS}",
                local=True,
            )
        config_bytes = archive._read_json_member(entry.config, "image config")
        config_digest = digest_of(config_bytes)
        archive._paths[config_digest] = _member_name(entry.config)
        config_desc = Descriptor(
            media_type=DOCKER_CONFIG, digest=config_digest, size=len(config_bytes)
        )
        layers = [_docker_layer(archive, path) for path in entry.layers]
        manifest = Manifest(
            schema_version=2, media_type=DOCKER_MANIFEST, config=config_desc, layers=layers
        )
        config = decode_config(config_bytes, manifest)
        manifest_bytes = encode(manifest)
        manifest_desc = Descriptor(
            media_type=DOCKER_MANIFEST, digest=digest_of(manifest_bytes), size=len(manifest_bytes)
        )
        archive._synthetic[manifest_desc.digest] = manifest_bytes
        tags: list[str | None] = [*entry.repo_tags] if entry.repo_tags else [None]
        for repo_tag in tags:
            name = _full_name(repo_tag)
            if repo_tag is not None and name is None:
                raise InvalidArgument(
                    f"archive manifest.json has an invalid RepoTag {repo_tag[:200]!r}",
                    local=True,
                )
            archive.images.append(
                ArchiveImage(
                    name=name,
                    tag=parse_reference(name).tag if name else None,
                    target=manifest_desc,
                    manifest_descriptor=manifest_desc,
                    manifest=manifest,
                    config_descriptor=config_desc,
                    config=config,
                    layers=layers,
                )
            )


def _docker_layer(archive: ImageArchive, path: str) -> Descriptor:
    """Hash a layer tar of a docker save archive into a descriptor (one pass)."""
    canonical = _member_name(path)
    stream = archive._open_member(canonical, "layer")
    with stream:
        head = stream.read(2)
        hasher = hashlib.sha256(head)
        size = len(head)
        while chunk := stream.read(_READ_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    digest = "sha256:" + hasher.hexdigest()
    archive._paths.setdefault(digest, canonical)
    media_type = DOCKER_LAYER_GZIP if head == b"\x1f\x8b" else DOCKER_LAYER
    return Descriptor(media_type=media_type, digest=digest, size=size)


class DockerSaveEntry(msgspec.Struct, frozen=True):
    """One image for a docker-compatible ``manifest.json``: its config, layers and names."""

    config: Descriptor
    layers: list[Descriptor]
    names: list[str]


def named_descriptor(target: Descriptor, name: str | Reference) -> Descriptor:
    """``target`` annotated for an archive's index.json with the image's name and tag."""
    ref = parse_reference(name) if isinstance(name, str) else name
    annotations = dict(target.annotations or {})
    annotations[ANNOTATION_IMAGE_NAME] = str(ref)
    if ref.tag:
        annotations[ANNOTATION_REF_NAME] = ref.tag
    return msgspec.structs.replace(target, annotations=annotations)


def _tar_info(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0  # reproducible archives
    return info


def write_oci_archive(
    out: BinaryIO,
    manifests: Sequence[Descriptor],
    *,
    blobs: Iterable[Descriptor],
    open_blob: Callable[[Descriptor], BinaryIO],
    docker: Sequence[DockerSaveEntry] = (),
) -> None:
    """Write an OCI image layout tar: ``manifests`` become index.json, ``blobs`` the files.

    Each blob is streamed from ``open_blob(descriptor)`` and verified on the way; a blob that
    does not match its descriptor fails the export with DataLoss. ``docker`` entries add a
    ``manifest.json`` so that ``docker load`` (before Docker 25) reads the archive too, as
    containerd's exporter does; their config and layers must be among ``blobs``.
    """
    index = Index(schema_version=2, media_type=OCI_INDEX, manifests=list(manifests))
    index_bytes = encode(index)
    layout = b'{"imageLayoutVersion":"1.0.0"}'
    seen: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info("oci-layout", len(layout)), io.BytesIO(layout))
        tar.addfile(_tar_info("blobs", 0, directory=True))
        algorithms: set[str] = set()
        for descriptor in blobs:
            if descriptor.digest in seen:
                continue
            seen.add(descriptor.digest)
            algorithm, encoded = parse_digest(descriptor.digest)
            if algorithm not in algorithms:
                algorithms.add(algorithm)
                tar.addfile(_tar_info(f"blobs/{algorithm}", 0, directory=True))
            source = open_blob(descriptor)
            try:
                reader = _VerifyingReader(source, descriptor)
                tar.addfile(_tar_info(f"blobs/{algorithm}/{encoded}", descriptor.size), reader)
                # tarfile stops at the size: one more read lets the verifier see the end (and
                # check the digest) or the excess.
                reader.read(1)
            finally:
                source.close()
        tar.addfile(_tar_info("index.json", len(index_bytes)), io.BytesIO(index_bytes))
        if docker:
            listing = [
                {
                    "Config": _blob_name(entry.config),
                    "RepoTags": [
                        ref.familiar_name + ":" + ref.tag
                        for ref in map(parse_reference, entry.names)
                        if ref.tag is not None
                    ],
                    "Layers": [_blob_name(layer) for layer in entry.layers],
                }
                for entry in docker
            ]
            for entry in docker:
                for blob in (entry.config, *entry.layers):
                    if blob.digest not in seen:
                        raise InvalidArgument(
                            f"docker manifest.json refers to {blob.digest}, not exported",
                            local=True,
                        )
            data = msgspec.json.encode(listing)
            tar.addfile(_tar_info("manifest.json", len(data)), io.BytesIO(data))


def _blob_name(descriptor: Descriptor) -> str:
    algorithm, encoded = parse_digest(descriptor.digest)
    return f"blobs/{algorithm}/{encoded}"
