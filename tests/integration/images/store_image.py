"""A tiny OCI image built in Python from the busybox rootfs, for the image-store tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import msgspec

from actors.images._store import Descriptor

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> Descriptor:
    return Descriptor(media_type=media_type, digest=digest_of(data), size=len(data))


def _tar(add: object) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar)  # type: ignore[operator]
    return buffer.getvalue()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def tar_of_directory(root: Path, extra: dict[str, bytes]) -> bytes:
    def add(tar: tarfile.TarFile) -> None:
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(".containerd-actors"):
                continue
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)

    return _tar(add)


def tar_of_files(files: dict[str, bytes]) -> bytes:
    def add(tar: tarfile.TarFile) -> None:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

    return _tar(add)


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """Blobs of one image: layer blobs (gzip), diff IDs, config and manifest."""

    layers: list[tuple[Descriptor, bytes]]
    diff_ids: list[str]
    config: tuple[Descriptor, bytes]
    manifest: tuple[Descriptor, bytes]

    def blobs(self) -> list[tuple[Descriptor, bytes]]:
        return [*self.layers, self.config, self.manifest]


def build_image(rootfs: Path, extra_files: dict[str, bytes]) -> Image:
    """Layer 0: the busybox rootfs (plus incompressible noise, so its blob is over 1 MiB);
    layer 1: ``extra_files``."""
    noise = random.Random(0).randbytes(256 * 1024)
    tars = [tar_of_directory(rootfs, {"noise.bin": noise}), tar_of_files(extra_files)]
    layers = [(descriptor(OCI_LAYER_GZIP, blob), blob) for blob in map(_gzip, tars)]
    diff_ids = [digest_of(t) for t in tars]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()
    config_desc = descriptor(OCI_CONFIG, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_desc.digest, "size": len(config)},
            "layers": [
                {"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d, _ in layers
            ],
        },
        sort_keys=True,
    ).encode()
    return Image(
        layers=layers,
        diff_ids=diff_ids,
        config=(config_desc, config),
        manifest=(descriptor(OCI_MANIFEST, manifest), manifest),
    )
