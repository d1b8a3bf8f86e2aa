"""The built-in ``busybox`` image: made offline from the host's static busybox, when absent.

``run busybox`` must work without a registry, and every container must get its own
copy-on-write root (a shared writable directory let one container replace ``/bin/busybox``
for all, and made ``serve`` follow symlinks a container planted). So the built-in busybox
is an ordinary image in containerd's store, named as docker names ``busybox``
(``docker.io/library/busybox:latest``), and containers run on snapshots of it.

The layer is built **in memory** from the host binary: no directory is created, read back
or followed, so nothing a container could write is ever on the path (the image is only an
import source). It is deterministic (fixed mtimes, gzip without a timestamp), so the same
host busybox always gives the same digests.

Import happens only when no image of that name exists: a real busybox pulled from a
registry under the same name is never replaced (Images.Create, never Update).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
from typing import TYPE_CHECKING, Final, Protocol

import trio

from ..containerd._embedded import _find_busybox
from ..errors import AlreadyExists, FailedPrecondition, NotFound
from ._digest import digest_of
from ._media import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ContainerConfig,
    Descriptor,
    ImageConfig,
    Manifest,
    RootFS,
    encode,
)
from ._model import Image, bytes_source, image_of
from ._platform import host_platform
from ._runconfig import DEFAULT_PATH_ENV
from ._types import Descriptor as StoreDescriptor
from ._types import config_gc_labels, manifest_gc_labels

if TYPE_CHECKING:
    from ._media import Index
    from ._store import ContentStore


class _Images(Protocol):
    """What this module needs of :class:`actors.images._api.Images` (which calls it)."""

    store: ContentStore

    async def get(self, name: str) -> Image: ...

    async def unpack(self, image: Image, *, lease: str | None = None) -> None: ...

    def remember(self, digest: str, doc: Manifest | Index | ImageConfig) -> None: ...


__all__ = ["BUSYBOX_IMAGE", "busybox_layer", "ensure_busybox_image"]

BUSYBOX_IMAGE: Final = "docker.io/library/busybox:latest"
BUILTIN_LABEL: Final = "org.containerd-actors.builtin"
_MTIME: Final = 1_700_000_000
_DIRS: Final = ("bin", "dev", "etc", "proc", "root", "run", "sys", "tmp")


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = _MTIME
    info.uname = info.gname = "root"
    return info


def busybox_layer(busybox: str | None = None) -> tuple[bytes, str]:
    """(gzip layer, diff ID) of a minimal busybox rootfs, built in memory."""
    path = busybox or _find_busybox()
    if path is None:
        raise FailedPrecondition(
            "busybox not found: install the Debian package busybox-static", local=True
        )
    with open(path, "rb") as file:
        binary = file.read()
    applets = subprocess.run(
        [path, "--list"], check=True, capture_output=True, text=True, timeout=30
    ).stdout.split()
    files = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
        "etc/group": b"root:x:0:\n",
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in _DIRS:
            tar.addfile(_entry(name, tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755))
        tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), io.BytesIO(binary))
        for applet in sorted(set(applets) - {"busybox"}):
            if "/" not in applet and applet not in (".", ".."):
                tar.addfile(_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, data in files.items():
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    uncompressed = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(uncompressed).hexdigest()
    return gzip.compress(uncompressed, mtime=0), diff_id


async def ensure_busybox_image(images: _Images, *, name: str = BUSYBOX_IMAGE) -> Image:
    """The image ``name`` if it exists (whatever made it), else the built-in busybox,
    imported under that name. Costs one Images.Get when present."""
    try:
        return await images.get(name)
    except NotFound:
        pass
    layer, diff_id = await trio.to_thread.run_sync(busybox_layer)
    platform = host_platform()
    layer_desc = Descriptor(media_type=OCI_LAYER_GZIP, digest=digest_of(layer), size=len(layer))
    config = ImageConfig(
        architecture=platform.architecture,
        os=platform.os,
        variant=platform.variant,
        rootfs=RootFS(type="layers", diff_ids=[diff_id]),
        config=ContainerConfig(
            cmd=["sh"], env=[DEFAULT_PATH_ENV], labels={BUILTIN_LABEL: "busybox"}
        ),
    )
    config_bytes = encode(config)
    config_desc = Descriptor(
        media_type=OCI_CONFIG, digest=digest_of(config_bytes), size=len(config_bytes)
    )
    manifest = Manifest(
        schema_version=2, media_type=OCI_MANIFEST, config=config_desc, layers=[layer_desc]
    )
    manifest_bytes = encode(manifest)
    manifest_desc = Descriptor(
        media_type=OCI_MANIFEST, digest=digest_of(manifest_bytes), size=len(manifest_bytes)
    )
    image = image_of(name, manifest_desc, manifest_desc, manifest, config_desc, config)
    store = images.store
    snapshotter = await store.snapshotter()
    async with store.open_lease() as lease:
        await store.ingest(layer_desc, bytes_source(layer), lease=lease)
        await store.ingest(
            config_desc,
            bytes_source(config_bytes),
            labels=config_gc_labels(snapshotter, image.chain_id),
            lease=lease,
        )
        await store.ingest(
            manifest_desc,
            bytes_source(manifest_bytes),
            labels=manifest_gc_labels(config_desc, [layer_desc]),
            lease=lease,
        )
        await images.unpack(image, lease=lease)
        try:
            # Create only: an image of this name made meanwhile (a pull) wins. Through the
            # store, so the client's name cache expects this write's event.
            await store.create_image(
                name,
                StoreDescriptor.of(manifest_desc),
                {BUILTIN_LABEL: "busybox"},
                lease=lease,
                replace=False,
            )
        except AlreadyExists:
            return await images.get(name)
    images.remember(manifest_desc.digest, manifest)
    images.remember(config_desc.digest, config)
    return await images.get(name)
