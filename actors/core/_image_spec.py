"""The spec of a container made from an image (docker's rules; see actors.images._runconfig).

>>> # image = await client.images.get("busybox")
>>> # spec = image_spec(image, args=["echo", "hi"], memory_limit=64 << 20)
>>> # await client.new_container("c1", spec, image=image)

The root is the container's own snapshot, mounted by containerd at the bundle's ``rootfs``
directory, so ``root.path`` is ``rootfs``. Only the image's Entrypoint, Cmd, Env,
WorkingDir and User reach the spec: an image cannot ask for privileges, mounts, devices or
capabilities (its ``Volumes`` become nothing; docker would add anonymous volumes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import InvalidArgument
from ..images._api import Image
from ..images._runconfig import RunConfig, merge_run_config
from .spec import Root, Spec, build_spec

__all__ = ["IMAGE_ROOT_PATH", "image_run_config", "image_spec", "with_image_root"]

IMAGE_ROOT_PATH = "rootfs"


def image_run_config(
    image: Image,
    *,
    args: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    cwd: str | None = None,
    user: str | None = None,
) -> RunConfig:
    """The init process of a container from ``image`` (argv, env, cwd, uid/gid)."""
    return merge_run_config(
        image.config.config, args=args, entrypoint=entrypoint, env=env, cwd=cwd, user=user
    )


def with_image_root(spec: Spec) -> Spec:
    """``spec`` rooted at the snapshot's mount point (``rootfs`` in the bundle)."""
    readonly = bool(spec.root.readonly) if spec.root is not None else False
    return msgspec.structs.replace(spec, root=Root(path=IMAGE_ROOT_PATH, readonly=readonly))


def image_spec(
    image: Image,
    *,
    args: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    cwd: str | None = None,
    user: str | None = None,
    # Any: forwarded to build_spec as they are, which types and checks each keyword.
    **options: Any,
) -> Spec:
    """A spec for a container on ``image``: its config merged with these overrides.

    Args:
        image: from ``client.images`` (pull, get, import_archive).
        args: replaces the image's Cmd (keeps its Entrypoint).
        entrypoint: replaces the image's Entrypoint and drops its Cmd; ``[""]`` clears it.
        env: ``KEY=VALUE`` entries that win over the image's.
        cwd: working directory (default: the image's WorkingDir, else ``/``).
        user: ``uid[:gid]`` (default: the image's User; names other than root are refused).
        options: any other :func:`actors.build_spec` keyword (``terminal``,
            ``memory_limit``, ``hardened``, ...).

    Raises:
        InvalidArgument: no command, a bad user or a bad option.
    """
    run = image_run_config(image, args=args, entrypoint=entrypoint, env=env, cwd=cwd, user=user)
    try:
        # build_spec wants an existing directory; the real root is the snapshot (below).
        spec = build_spec("/", run.args, env=run.env, cwd=run.cwd, user=run.user, **options)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"image {image.name}: {exc}", local=True) from None
    return with_image_root(spec)
