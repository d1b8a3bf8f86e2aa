"""Build test images from the busybox rootfs: OCI layers, configs, manifests, an index.

The image exercises what unpacking must get right:

- layer 0: the busybox rootfs plus ``/etc/motd`` ("layer 0"), ``/data/removed``,
  ``/opq/old`` and ``/opq/sub/older``;
- layer 1: ``/etc/motd`` overridden ("layer 1"), a whiteout ``/data/.wh.removed``, an opaque
  directory ``/opq/.wh..wh..opq`` with ``/opq/new``;
- optional ``extra`` layers (name -> bytes at the root), e.g. to make a unique blob;
- config: Entrypoint ``["/bin/sh", "-c"]``, Cmd ``["cat /etc/motd"]``, Env with PATH and
  ``GREETING=hello``, WorkingDir ``/data``, StopSignal ``SIGINT``, a label.

:func:`build_image` returns every blob in memory (:class:`BuiltImage`) and, with ``layout``,
writes an OCI image layout directory that ``skopeo copy --all oci:DIR:TAG docker://...`` can
push (:func:`skopeo_push`). ``platforms`` with more than one entry makes an index; the
configs differ in ``architecture`` only (the layers are shared).
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from actors import build_busybox_rootfs
from actors.images._digest import digest_of
from actors.images._media import (
    ANNOTATION_REF_NAME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ContainerConfig,
    Descriptor,
    History,
    ImageConfig,
    Index,
    Manifest,
    RootFS,
    encode,
)
from actors.images._platform import Platform, parse_platform

_MTIME = 1_700_000_000

ENTRYPOINT = ["/bin/sh", "-c"]
CMD = ["cat /etc/motd"]
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"]
WORKING_DIR = "/data"


@dataclass
class BuiltImage:
    """Everything a test needs to check a pull: descriptors, documents and blob bytes."""

    target: Descriptor  # the index when there are several platforms, else the manifest
    manifests: dict[str, Descriptor]  # platform string -> manifest descriptor
    configs: dict[str, ImageConfig]
    layers: list[Descriptor]
    diff_ids: list[str]
    blobs: dict[str, bytes] = field(default_factory=dict)

    def blob(self, descriptor: Descriptor) -> bytes:
        return self.blobs[descriptor.digest]


def _info(
    name: str, *, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = _MTIME
    return info


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    tar.addfile(_info(name, size=len(data), mode=mode), io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_info(name, kind=tarfile.DIRTYPE, mode=0o755))


def _add_tree(tar: tarfile.TarFile, root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        rel_dir = base.relative_to(root).as_posix()
        if rel_dir != ".":
            info = tar.gettarinfo(str(base), arcname=rel_dir)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "", ""
            tar.addfile(info)
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            path = base / name
            if name == ".containerd-actors-rootfs":
                continue
            rel = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "", ""
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def _layer(build: object) -> tuple[bytes, str]:
    """(gzip blob, diff ID) of the tar that ``build(tar)`` writes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)  # type: ignore[operator]
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=1, mtime=0), digest_of(data)


def _base_layer(rootfs: Path) -> object:
    def build(tar: tarfile.TarFile) -> None:
        _add_tree(tar, rootfs)
        _add_file(tar, "etc/motd", b"layer 0\n")
        _add_dir(tar, "data")
        _add_file(tar, "data/removed", b"whited out by layer 1\n")
        _add_file(tar, "data/kept", b"kept\n")
        _add_dir(tar, "opq")
        _add_file(tar, "opq/old", b"hidden by the opaque directory\n")
        _add_dir(tar, "opq/sub")
        _add_file(tar, "opq/sub/older", b"hidden too\n")

    return build


def _top_layer(tar: tarfile.TarFile) -> None:
    _add_dir(tar, "etc")
    _add_file(tar, "etc/motd", b"layer 1\n")
    _add_dir(tar, "data")
    _add_file(tar, "data/.wh.removed", b"")
    _add_dir(tar, "opq")
    _add_file(tar, "opq/.wh..wh..opq", b"")
    _add_file(tar, "opq/new", b"new\n")


@dataclass(frozen=True)
class Symlink:
    """An ``extra`` entry that is a symbolic link to ``target``."""

    target: str


@dataclass(frozen=True)
class Fifo:
    """An ``extra`` entry that is a named pipe."""


ExtraEntry = bytes | Symlink | Fifo


def _extra_layer(files: Mapping[str, ExtraEntry]) -> object:
    def build(tar: tarfile.TarFile) -> None:
        for name, entry in sorted(files.items()):
            if isinstance(entry, Symlink):
                info = _info(name, kind=tarfile.SYMTYPE, mode=0o777)
                info.linkname = entry.target
                tar.addfile(info)
            elif isinstance(entry, Fifo):
                tar.addfile(_info(name, kind=tarfile.FIFOTYPE, mode=0o644))
            else:
                _add_file(tar, name, entry)

    return build


def build_image(
    rootfs: Path,
    *,
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"),
    extra: Mapping[str, ExtraEntry] | None = None,
    layout: Path | None = None,
    tag: str = "latest",
    user: str = "",
    stop_signal: str = "SIGINT",
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    volumes: list[str] | None = None,
) -> BuiltImage:
    """Build the test image from a busybox rootfs directory (made if missing).

    ``extra`` entries (regular files, :class:`Symlink`, :class:`Fifo`) go into a third
    layer; ``user``, ``stop_signal``, ``entrypoint`` and ``cmd`` set the config's fields.
    """
    build_busybox_rootfs(rootfs)
    blobs: dict[str, bytes] = {}
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    builders = [_base_layer(rootfs), _top_layer]
    if extra:
        builders.append(_extra_layer(extra))
    for builder in builders:
        blob, diff_id = _layer(builder)
        desc = Descriptor(media_type=OCI_LAYER_GZIP, digest=digest_of(blob), size=len(blob))
        blobs[desc.digest] = blob
        layers.append(desc)
        diff_ids.append(diff_id)
    manifests: dict[str, Descriptor] = {}
    configs: dict[str, ImageConfig] = {}
    for text in platforms:
        platform = parse_platform(text)
        config = ImageConfig(
            architecture=platform.architecture,
            os=platform.os,
            variant=platform.variant,
            created="2023-11-14T22:13:20Z",
            rootfs=RootFS(type="layers", diff_ids=diff_ids),
            config=ContainerConfig(
                entrypoint=ENTRYPOINT if entrypoint is None else entrypoint,
                cmd=CMD if cmd is None else cmd,
                env=ENV,
                working_dir=WORKING_DIR,
                user=user,
                stop_signal=stop_signal,
                volumes={path: {} for path in volumes} if volumes else None,
                labels={"org.example.test": "yes"},
                exposed_ports={"8080/tcp": {}},
            ),
            history=[
                History(created_by="imagebuilder layer", comment=str(i)) for i in range(len(layers))
            ],
        )
        config_bytes = encode(config)
        config_desc = Descriptor(
            media_type=OCI_CONFIG, digest=digest_of(config_bytes), size=len(config_bytes)
        )
        blobs[config_desc.digest] = config_bytes
        manifest = Manifest(
            schema_version=2, media_type=OCI_MANIFEST, config=config_desc, layers=layers
        )
        manifest_bytes = encode(manifest)
        manifest_desc = Descriptor(
            media_type=OCI_MANIFEST,
            digest=digest_of(manifest_bytes),
            size=len(manifest_bytes),
            platform=Platform(
                os=platform.os, architecture=platform.architecture, variant=platform.variant
            ),
        )
        blobs[manifest_desc.digest] = manifest_bytes
        manifests[str(platform)] = manifest_desc
        configs[str(platform)] = config
    if len(manifests) > 1:
        index = Index(schema_version=2, media_type=OCI_INDEX, manifests=list(manifests.values()))
        index_bytes = encode(index)
        target = Descriptor(
            media_type=OCI_INDEX, digest=digest_of(index_bytes), size=len(index_bytes)
        )
        blobs[target.digest] = index_bytes
    else:
        only = next(iter(manifests.values()))
        target = Descriptor(media_type=only.media_type, digest=only.digest, size=only.size)
    image = BuiltImage(
        target=target,
        manifests=manifests,
        configs=configs,
        layers=layers,
        diff_ids=diff_ids,
        blobs=blobs,
    )
    if layout is not None:
        write_layout(image, layout, tag)
    return image


def write_layout(image: BuiltImage, layout: Path, tag: str) -> None:
    """An OCI image layout directory with ``tag`` naming the image's target."""
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in image.blobs.items():
        (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entry = Descriptor(
        media_type=image.target.media_type,
        digest=image.target.digest,
        size=image.target.size,
        annotations={ANNOTATION_REF_NAME: tag},
    )
    index = Index(schema_version=2, media_type=OCI_INDEX, manifests=[entry])
    (layout / "index.json").write_bytes(encode(index))


def layout_tar(layout: Path) -> bytes:
    """The layout directory as a tar (what ``docker save`` / ``ctr export`` would produce)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=path.relative_to(layout).as_posix(), recursive=False)
    return out.getvalue()


def skopeo_push(
    layout: Path, tag: str, destination: str, *, credentials: tuple[str, str] | None = None
) -> None:
    """Push ``oci:layout:tag`` (every platform) to ``docker://destination`` over plain HTTP."""
    command = [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]
    if credentials is not None:
        command.append(f"--dest-creds={credentials[0]}:{credentials[1]}")
    command += [f"oci:{layout}:{tag}", f"docker://{destination}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo copy failed: {result.stderr.strip()}")
