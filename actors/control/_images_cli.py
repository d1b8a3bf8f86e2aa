"""The CLI's image verbs: ``pull``, ``images``, ``rmi``, ``load``, ``save`` (docker's shapes).

``pull`` draws one progress line per layer on a terminal and prints plain lines otherwise
(one per state change), like docker. Registry credentials come from the caller's
``~/.docker/config.json`` (the server never uses its own), are sent with that one request
and never printed.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ..errors import ContainerdActorsError
from ..images._dockerconfig import load_docker_config, lookup_credentials
from ..images._reference import parse_reference
from ._protocol import IMAGE_PIECE_BYTES

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from .gateway_client import GatewayClient

__all__ = ["add_image_verbs", "pull_params", "pull_with_progress"]

_json = msgspec.json.Encoder()
Gateway = Callable[[argparse.Namespace], "AbstractAsyncContextManager[GatewayClient]"]


def pull_params(reference: str) -> dict[str, Any]:
    """``image.pull`` params, with the caller's docker credentials for that registry."""
    params: dict[str, Any] = {"reference": reference}
    try:
        host = parse_reference(reference).api_host
        credentials = lookup_credentials(load_docker_config(), host)
    except (ContainerdActorsError, OSError, ValueError):
        credentials = None
    if credentials is not None and credentials.username and credentials.password:
        params["username"] = credentials.username
        params["password"] = credentials.password
    return params


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.3g}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1000
    return f"{size:.3g}GB"


class _Progress:
    """Per-layer bars on a terminal (redrawn in place), or one line per state change."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.layers: dict[int, dict[str, Any]] = {}
        self.drawn = 0
        self.last_state: dict[int, str] = {}

    def update(self, layer: dict[str, Any]) -> None:
        index = int(layer.get("index", 0))
        self.layers[index] = layer
        if self.tty:
            self._draw()
        elif self.last_state.get(index) != layer.get("state"):
            self.last_state[index] = str(layer.get("state"))
            print(self._line(layer), file=self.stream, flush=True)

    def _line(self, layer: dict[str, Any]) -> str:
        digest = str(layer.get("digest", ""))[7:19]
        state = str(layer.get("state", ""))
        done, total = int(layer.get("done", 0)), int(layer.get("total", 0)) or 1
        if state == "downloading" and self.tty:
            width = 30
            filled = min(width, done * width // total)
            bar = "=" * max(0, filled - 1) + (">" if filled else "") + " " * (width - filled)
            return f"{digest}: Downloading [{bar}] {_human(done)}/{_human(total)}"
        labels = {
            "waiting": "Waiting",
            "downloading": "Downloading",
            "exists": "Already exists",
            "extracting": "Extracting",
            "done": "Pull complete",
        }
        return f"{digest}: {labels.get(state, state)}"

    def _draw(self) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}A")
        for index in sorted(self.layers):
            self.stream.write("\x1b[2K" + self._line(self.layers[index]) + "\n")
        self.drawn = len(self.layers)
        self.stream.flush()


async def pull_with_progress(gw: GatewayClient, reference: str) -> dict[str, Any]:
    """Pull through the control plane, drawing progress on stderr; returns the image."""
    progress = _Progress(sys.stderr)
    image: dict[str, Any] = await gw.call_with_progress(
        "image.pull", pull_params(reference), progress.update
    )
    print(f"Digest: {image['digest']}", file=sys.stderr)
    print(f"Status: Downloaded newer image for {reference}", file=sys.stderr)
    return image


def _make_verbs(gateway: Gateway) -> dict[str, Callable[[argparse.Namespace], Any]]:
    async def cmd_pull(args: argparse.Namespace) -> int:
        async with gateway(args) as gw:
            image = await pull_with_progress(gw, args.image)
        print(image["name"])
        return 0

    async def cmd_images(args: argparse.Namespace) -> int:
        async with gateway(args) as gw:
            images = await gw.call("image.list")
        if args.format == "json":
            for image in images:
                print(_json.encode(image).decode())
            return 0
        print(f"{'REPOSITORY':<40} {'TAG':<16} {'IMAGE ID':<14} {'CREATED':<22} SIZE")
        for image in images:
            created = image.get("created") or ""
            if not created and image.get("created_at"):
                when = datetime.datetime.fromtimestamp(image["created_at"], datetime.UTC)
                created = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            print(
                f"{image['repository']:<40} {image['tag']:<16} {image['id'][7:19]:<14} "
                f"{created[:20]:<22} {_human(image['size'])}"
            )
        return 0

    async def cmd_rmi(args: argparse.Namespace) -> int:
        code = 0
        async with gateway(args) as gw:
            for name in args.images:
                try:
                    result = await gw.call("image.remove", {"name": name})
                except ContainerdActorsError as exc:
                    print(f"containerd-actors: {exc}", file=sys.stderr)
                    code = 1
                    continue
                print(f"Untagged: {result['removed']}")
        return code

    async def cmd_load(args: argparse.Namespace) -> int:
        source = Path(args.input) if args.input else None
        async with gateway(args) as gw:
            upload: str | None = None
            with open(source, "rb") if source else sys.stdin.buffer as stream:  # noqa: ASYNC230
                while True:
                    piece = await trio.to_thread.run_sync(stream.read, IMAGE_PIECE_BYTES)
                    params: dict[str, Any] = {
                        "data": base64.b64encode(piece).decode(),
                        "done": not piece,
                    }
                    if upload is not None:
                        params["upload"] = upload
                    result = await gw.call("image.load", params)
                    if not piece:
                        break
                    upload = result["upload"]
        for image in result["images"]:
            print(f"Loaded image: {image['name']}")
        return 0

    async def cmd_save(args: argparse.Namespace) -> int:
        if not args.output and sys.stdout.isatty():
            print(
                "containerd-actors: refusing to write an archive to a terminal (-o FILE)",
                file=sys.stderr,
            )
            return 1
        target = Path(args.output) if args.output else None
        partial = target.with_name(target.name + ".partial") if target else None
        async with gateway(args) as gw:
            out = open(partial, "wb") if partial else sys.stdout.buffer  # noqa: ASYNC230, SIM115
            try:
                result = await gw.call("image.save", {"names": args.images})
                while True:
                    out.write(base64.b64decode(result["data"]))
                    if result["eof"]:
                        break
                    offset = result["offset"] + IMAGE_PIECE_BYTES
                    result = await gw.call(
                        "image.save", {"download": result["download"], "offset": offset}
                    )
            except BaseException:
                if partial:
                    out.close()
                    partial.unlink(missing_ok=True)  # no half archive left behind
                raise
            if partial:
                out.close()
        if target and partial:
            os.replace(partial, target)
        return 0

    return {
        "pull": cmd_pull,
        "images": cmd_images,
        "rmi": cmd_rmi,
        "load": cmd_load,
        "save": cmd_save,
    }


def add_image_verbs(sub: Any, gateway: Gateway) -> None:
    """Add the image verbs to the CLI's subparsers; ``gateway`` opens the connection."""
    verbs = _make_verbs(gateway)
    pull = sub.add_parser("pull", help="pull an image from a registry")
    pull.add_argument("image", help="e.g. busybox, alpine:3.20, localhost:5000/app:1")
    pull.set_defaults(handler=verbs["pull"])
    images = sub.add_parser("images", help="list images")
    images.add_argument(
        "--format", choices=("table", "json"), default="table", help="json: one object per line"
    )
    images.set_defaults(handler=verbs["images"])
    rmi = sub.add_parser("rmi", help="remove images")
    rmi.add_argument("images", nargs="+")
    rmi.set_defaults(handler=verbs["rmi"])
    load = sub.add_parser("load", help="load images from an OCI or docker-save tar")
    load.add_argument("-i", "--input", help="archive file (default: stdin)")
    load.set_defaults(handler=verbs["load"])
    save = sub.add_parser("save", help="save images to an OCI tar (docker load reads it)")
    save.add_argument("-o", "--output", help="archive file (default: stdout)")
    save.add_argument("images", nargs="+")
    save.set_defaults(handler=verbs["save"])
