"""The spec of a container made from an image (docker's rules; see actors.images._runconfig).

>>> # image = await client.images.get("busybox")
>>> # spec = image_spec(image, args=["echo", "hi"], memory_limit=64 << 20)
>>> # await client.new_container("c1", spec, image=image)

The root is the container's own snapshot, mounted by containerd at the bundle's ``rootfs``
directory, so ``root.path`` is ``rootfs``. Only the image's Entrypoint, Cmd, Env,
WorkingDir and User reach the spec (a User given by name is resolved from the image's
own passwd/group files, see actors.images._passwd): an image cannot ask for privileges,
mounts, devices or capabilities. Its ``Volumes`` get no volume: the paths stay in the
container's own snapshot, removed with it (docker's anonymous volumes with ``--rm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import InvalidArgument
from ..images._passwd import ExecUser
from ..images._runconfig import RunConfig, merge_run_config
from .spec import Root, Spec, User, build_spec

if TYPE_CHECKING:
    # Only a type here: the CLI imports this module and needs no registry client.
    from ..images._api import Image

__all__ = [
    "IMAGE_ROOT_PATH",
    "USER_LOOKUP_ANNOTATION",
    "image_run_config",
    "image_spec",
    "resolved_user",
    "user_lookup",
    "with_image_root",
    "with_user_lookup",
]

IMAGE_ROOT_PATH = "rootfs"
# A spec whose user is a name (``app``, ``www-data:staff``) carries it here until
# Client.new_container resolves it in the image's passwd/group (the process runs as nobody
# until then); the annotation never reaches runc.
USER_LOOKUP_ANNOTATION = "org.containerd-actors.image-user"


def with_user_lookup(spec: Spec, text: str) -> Spec:
    """``spec`` marked for resolving user ``text`` in the image (no-op for "")."""
    if not text:
        return spec
    return msgspec.structs.replace(
        spec, annotations={**spec.annotations, USER_LOOKUP_ANNOTATION: text}
    )


def user_lookup(spec: Spec) -> str:
    """The user name ``spec`` waits to have resolved, or ""."""
    return spec.annotations.get(USER_LOOKUP_ANNOTATION, "")


def resolved_user(spec: Spec, user: ExecUser) -> Spec:
    """``spec`` running as ``user``, the lookup mark removed."""
    annotations = {k: v for k, v in spec.annotations.items() if k != USER_LOOKUP_ANNOTATION}
    process = spec.process
    if process is not None:
        identity = User(
            uid=user.uid,
            gid=user.gid,
            umask=process.user.umask,
            additional_gids=list(user.additional_gids),
        )
        process = msgspec.structs.replace(process, user=identity)
    return msgspec.structs.replace(spec, annotations=annotations, process=process)


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
        user: ``user[:group]`` (default: the image's User); a name is resolved in the
            image's ``/etc/passwd`` and ``/etc/group`` by ``Client.new_container`` once the
            container's snapshot exists (the spec carries it until then).
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
    return with_user_lookup(with_image_root(spec), run.user_lookup)
