"""Docker's rules for turning an image config plus a request into a process (no I/O).

The image config's run-time part (Entrypoint, Cmd, Env, WorkingDir, User, StopSignal) is
merged with what the caller asked for exactly as ``docker run`` does (moby's
``daemon/commit.go merge`` and ``daemon/create.go mergeAndVerifyConfig``):

- arguments replace the image's Cmd and keep its Entrypoint;
- an explicit entrypoint replaces the image's Entrypoint *and drops its Cmd*; an
  entrypoint of ``[""]`` (``--entrypoint ""``) clears it;
- Env: the caller's entries win by key, the image's other entries follow; ``PATH`` gets
  docker's default when neither sets it;
- WorkingDir and User: the caller's value, else the image's, else ``/`` and root. A user
  given by name (``app``, ``www-data:www-data``, ``1000:staff``) is looked up in the
  image's own ``/etc/passwd`` and ``/etc/group`` once the container's snapshot exists
  (see :mod:`actors.images._passwd`): :attr:`RunConfig.user_lookup` carries it, and
  :attr:`RunConfig.user` is ``nobody`` until then.

>>> from actors.images._media import ContainerConfig
>>> image = ContainerConfig(entrypoint=["/bin/sh", "-c"], cmd=["echo hi"], env=["A=1"])
>>> merge_run_config(image, args=["echo bye"]).args
['/bin/sh', '-c', 'echo bye']
>>> merge_run_config(image, entrypoint=["/bin/echo"]).args
['/bin/echo']
>>> merge_run_config(image, env=["A=2"]).env[0]
'A=2'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from ..errors import InvalidArgument
from ._media import ContainerConfig
from ._passwd import needs_lookup

__all__ = ["DEFAULT_PATH_ENV", "UNRESOLVED_USER", "RunConfig", "merge_run_config", "parse_user"]

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RunConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The init process an image plus a request give: argv, env, cwd, (uid, gid)."""

    args: list[str]
    env: list[str]
    cwd: str
    user: tuple[int, int]
    stop_signal: str = ""
    # ``user[:group]`` with a name in it, to resolve in the image's passwd/group files.
    user_lookup: str = ""


# What passwd/group names may look like (useradd's rule, plus '.'); anything else is refused
# before the image is read.
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}\$?")

# Until a user name is resolved the process would run as nobody, never as root.
UNRESOLVED_USER = (65534, 65534)


def parse_user(text: str) -> tuple[int, int]:
    """``uid``, ``uid:gid``, ``root`` or ``""`` as (uid, gid).

    User names other than ``root`` need the image's ``/etc/passwd``: they are refused
    here (:func:`merge_run_config` hands them to the lookup instead).
    """
    if not text or text in ("root", "0", "root:root", "0:0"):
        return (0, 0)
    user, _, group = text.partition(":")
    if user == "root":
        user = "0"
    if group == "root":
        group = "0"
    if not user.isdigit() or (group and not group.isdigit()):
        raise InvalidArgument(
            f"user {text[:64]!r}: only numeric uid[:gid] (or root) is supported", local=True
        )
    uid = int(user)
    # Without the image's passwd the primary group is 0, as runc does for unknown uids.
    gid = int(group) if group else 0
    if uid >= 2**32 or gid >= 2**32:
        raise InvalidArgument(f"user {text[:64]!r}: id out of range", local=True)
    return (uid, gid)


def _env_key(entry: str) -> str:
    return entry.partition("=")[0]


def merge_run_config(
    image: ContainerConfig | None,
    *,
    args: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    cwd: str | None = None,
    user: str | None = None,
) -> RunConfig:
    """The process of a container from ``image``'s config and the caller's overrides.

    Args:
        image: the config's ``config`` part (None: an image without one).
        args: replaces the image's Cmd (None or empty: keep it).
        entrypoint: replaces the image's Entrypoint and drops its Cmd; ``[""]`` clears it.
        env: ``KEY=VALUE`` entries that win over the image's.
        cwd: absolute working directory (default: the image's, else ``/``).
        user: ``user[:group]``, numeric or names (default: the image's, else root).

    Raises:
        InvalidArgument: nothing to run ("no command specified"), or a bad user.
    """
    config = image or ContainerConfig()
    user_cmd = list(args or [])
    user_ep = None if entrypoint is None else list(entrypoint)
    if not user_ep:
        if not user_cmd:
            user_cmd = list(config.cmd or [])
        if user_ep is None:
            user_ep = list(config.entrypoint or [])
    if user_ep == [""]:
        user_ep = []
    argv = user_ep + user_cmd
    if not argv:
        raise InvalidArgument(
            "no command specified: the image has no Entrypoint or Cmd, give a command",
            local=True,
        )
    merged = list(env)
    keys = {_env_key(entry) for entry in merged}
    for entry in config.env or []:
        if _env_key(entry) not in keys:
            merged.append(entry)
            keys.add(_env_key(entry))
    if "PATH" not in keys:
        merged.append(DEFAULT_PATH_ENV)
    workdir = cwd or config.working_dir or "/"
    if not workdir.startswith("/"):
        # Docker resolves a relative image WorkingDir against "/".
        workdir = "/" + workdir
    user_text = user if user else config.user
    lookup = user_text if needs_lookup(user_text) else ""
    if lookup:
        for part in lookup.split(":", 1):
            if part and not part.isdigit() and not _USER_NAME.fullmatch(part):
                raise InvalidArgument(
                    f"user {lookup[:64]!r}: invalid user or group name", local=True
                )
    return RunConfig(
        args=argv,
        env=merged,
        cwd=workdir,
        user=UNRESOLVED_USER if lookup else parse_user(user_text),
        stop_signal=config.stop_signal,
        user_lookup=lookup,
    )
