"""The control plane's image methods: image.pull, list, inspect, remove, load, save.

Self-contained so the gateway only routes ``image.*`` here (see :class:`ImageMethods`).

- ``image.pull {reference, platform?, progress?, username?, password?}``: pulls into the
  server's namespace. With ``progress`` (a token the caller picks), every layer change is
  sent as a notification ``image.progress {progress, layer: {index, digest, state, done,
  total}}`` before the reply. The server never uses its own registry credentials (no
  ``~/.docker/config.json`` of root) for a remote caller: a pull is anonymous unless the
  request carries ``username``/``password``, which are used for that pull only and never
  logged or echoed.
- ``image.list {}``, ``image.inspect {name}``, ``image.remove {name}``.
- ``image.load {upload?, data, done}``: an archive (OCI layout or docker save tar) sent in
  base64 pieces of at most 512 KiB; the first call (no ``upload``) answers ``{upload}``, the
  call with ``done`` imports and answers the images. The pieces go to a fresh private
  temporary file (at most :data:`MAX_ARCHIVE_BYTES`, a few uploads at a time).
- ``image.save {names, download?, offset}``: the first call exports into a private
  temporary file and answers ``{download, size, data, eof}``; later calls with ``download``
  and ``offset`` answer the next piece; the file goes at EOF (or when idle too long).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

import trio

from ..errors import InvalidArgument, NotFound, ResourceExhausted
from ..images._api import Image, Images, LayerProgress
from ..images._auth import Credentials
from ..images._builtin import BUSYBOX_IMAGE, ensure_busybox_image
from ..images._dockerconfig import DockerConfig
from ..images._reference import parse_reference
from ._protocol import IMAGE_PIECE_BYTES as PIECE_BYTES
from ._protocol import ImageLoadParams, ImagePullParams, ImageSaveParams

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "ImageMethods",
    "describe_image",
]

MAX_ARCHIVE_BYTES: Final = 8 << 30
MAX_TRANSFERS: Final = 4
IDLE_SECONDS: Final = 600.0


def describe_image(image: Image) -> dict[str, Any]:
    """An image as the control plane shows it (docker's ``images`` fields plus config)."""
    ref = parse_reference(image.name)
    run = image.config.config
    return {
        "name": image.name,
        "repository": ref.familiar_name,
        "tag": ref.tag or "<none>",
        "id": image.id,
        "digest": image.digest,
        "created": image.config.created or "",
        "created_at": image.created_at,
        "size": image.size,
        "platform": str(image.config.platform),
        "layers": len(image.layers),
        "config": {
            "entrypoint": (run.entrypoint if run else None) or [],
            "cmd": (run.cmd if run else None) or [],
            "env": (run.env if run else None) or [],
            "working_dir": run.working_dir if run else "",
            "user": run.user if run else "",
            "stop_signal": run.stop_signal if run else "",
            # Not volumes here: the paths stay in each container's own snapshot.
            "volumes": sorted(run.volumes or {}) if run else [],
        },
    }


class _Transfer:
    def __init__(self, path: str, directory: str) -> None:
        self.path = path
        self.directory = directory
        self.size = 0
        self.touched = time.monotonic()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)


def _fresh_file(prefix: str) -> _Transfer:
    # mkdtemp makes a new 0700 directory: no path in it existed before or is shared.
    directory = tempfile.mkdtemp(prefix=prefix)
    path = os.path.join(directory, "archive.tar")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    return _Transfer(path, directory)


class ImageMethods:
    """The ``image.*`` handlers of one gateway (their upload/download state included)."""

    def __init__(self, images: Callable[[], Images]) -> None:
        self._images = images
        self._uploads: dict[str, _Transfer] = {}
        self._downloads: dict[str, _Transfer] = {}

    def close(self) -> None:
        for transfer in (*self._uploads.values(), *self._downloads.values()):
            transfer.remove()
        self._uploads.clear()
        self._downloads.clear()

    async def resolve(self, name: str) -> Image:
        """The image a container runs on; the built-in busybox is imported when absent."""
        images = self._images()
        try:
            return await images.get(name)
        except NotFound:
            if str(parse_reference(name)) == BUSYBOX_IMAGE:
                return await ensure_busybox_image(images)
            raise NotFound(f"no such image: {name[:256]} (pull it first)", local=True) from None

    async def call(self, method: str, params: Any, notify: Callable[[str, Any], None]) -> Any:
        images = self._images()
        match method:
            case "image.pull":
                return await self._pull(images, params, notify)
            case "image.list":
                return [describe_image(image) for image in await images.list()]
            case "image.inspect":
                return describe_image(await self.resolve(params.name))
            case "image.remove":
                await images.remove(params.name)
                return {"removed": str(parse_reference(params.name))}
            case "image.load":
                return await self._load(images, params)
            case "image.save":
                return await self._save(images, params)
        raise InvalidArgument(f"method {method!r} is not served", local=True)

    async def _pull(
        self, images: Images, params: ImagePullParams, notify: Callable[[str, Any], None]
    ) -> Any:
        credentials: Credentials | DockerConfig = DockerConfig()
        if params.username is not None or params.password is not None:
            credentials = Credentials(params.username or "", params.password or "")
        token = params.progress

        def progress(layer: LayerProgress) -> None:
            if token is not None:
                notify(
                    "image.progress",
                    {
                        "progress": token,
                        "layer": {
                            "index": layer.index,
                            "digest": layer.digest,
                            "state": layer.state,
                            "done": layer.done,
                            "total": layer.total,
                        },
                    },
                )

        image = await images.pull(
            params.reference, platform=params.platform, credentials=credentials, progress=progress
        )
        return describe_image(image)

    def _expire(self) -> None:
        now = time.monotonic()
        for table in (self._uploads, self._downloads):
            for key, transfer in list(table.items()):
                if now - transfer.touched > IDLE_SECONDS:
                    transfer.remove()
                    del table[key]

    async def _load(self, images: Images, params: ImageLoadParams) -> Any:
        try:
            piece = base64.b64decode(params.data, validate=True)
        except ValueError:
            raise InvalidArgument("image.load: data is not base64", local=True) from None
        if params.upload is None:
            self._expire()
            if len(self._uploads) + len(self._downloads) >= MAX_TRANSFERS:
                raise ResourceExhausted("too many image transfers at once", local=True)
            upload = f"u{secrets.token_hex(8)}"
            self._uploads[upload] = await trio.to_thread.run_sync(_fresh_file, "actors-load-")
        else:
            upload = params.upload
        transfer = self._uploads.get(upload)
        if transfer is None:
            raise NotFound(f"image.load: no upload {upload!r}", local=True)
        transfer.touched = time.monotonic()
        try:
            if piece:
                if transfer.size + len(piece) > MAX_ARCHIVE_BYTES:
                    raise ResourceExhausted("image archive too large", local=True)
                await trio.to_thread.run_sync(_append, transfer.path, piece)
                transfer.size += len(piece)
            if not params.done:
                return {"upload": upload, "size": transfer.size}
            loaded = await images.import_archive(transfer.path)
        except BaseException:
            self._uploads.pop(upload, None)
            transfer.remove()
            raise
        self._uploads.pop(upload, None)
        transfer.remove()
        return {"images": [describe_image(image) for image in loaded]}

    async def _save(self, images: Images, params: ImageSaveParams) -> Any:
        if params.download is None:
            if not params.names:
                raise InvalidArgument("image.save: names are required", local=True)
            self._expire()
            if len(self._uploads) + len(self._downloads) >= MAX_TRANSFERS:
                raise ResourceExhausted("too many image transfers at once", local=True)
            transfer = await trio.to_thread.run_sync(_fresh_file, "actors-save-")
            try:
                await images.export(params.names, transfer.path)
                transfer.size = await trio.to_thread.run_sync(os.path.getsize, transfer.path)
            except BaseException:
                transfer.remove()
                raise
            download = f"d{secrets.token_hex(8)}"
            self._downloads[download] = transfer
        else:
            download = params.download
            found = self._downloads.get(download)
            if found is None:
                raise NotFound(f"image.save: no download {download!r}", local=True)
            transfer = found
        transfer.touched = time.monotonic()
        piece = await trio.to_thread.run_sync(_read_piece, transfer.path, params.offset)
        eof = params.offset + len(piece) >= transfer.size
        if eof:
            self._downloads.pop(download, None)
            transfer.remove()
        return {
            "download": download,
            "size": transfer.size,
            "offset": params.offset,
            "data": base64.b64encode(piece).decode(),
            "eof": eof,
        }


def _append(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _read_piece(path: str, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return os.pread(fd, PIECE_BYTES, offset)
    finally:
        os.close(fd)
