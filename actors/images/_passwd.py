"""An image's ``USER name[:group]`` resolved like docker, from the image's own passwd/group.

Docker (runc's ``user.GetExecUser``) looks the user up in the container's ``/etc/passwd``
and ``/etc/group``. We read those two files straight from the container's prepared snapshot
(no mount): the snapshot's mounts name its layer directories (overlay ``upperdir`` and
``lowerdir``s, or one bind directory for ``native``), searched top-down with overlayfs'
rules (a whiteout hides, an opaque directory hides what is below it).

The image is hostile, so the walk never follows a link and never blocks:

- every path component is opened relative to its parent with ``O_NOFOLLOW``; a symlinked
  ``/etc`` or ``/etc/passwd`` is refused (docker would follow it inside the container; on
  the host a link could point anywhere, so we never do);
- the file must be a regular file (a FIFO or device is refused, checked on the open fd, and
  opened ``O_NONBLOCK`` anyway) of at most :data:`MAX_FILE_BYTES`;
- errors name the image path and the user, never a host path.

Resolution rules (:func:`resolve_user`), docker's:

- ``name`` or ``uid``: the passwd entry matching it gives uid and primary gid; a name not
  in passwd is an error; a uid not in passwd runs with gid 0;
- ``:group``: by name or gid in the group file (a name not there is an error, a gid is
  taken as is), replacing the primary gid;
- without ``:group``, the groups listing the user's name as a member are its
  supplementary groups.

>>> passwd = b"root:x:0:0:root:/root:/bin/sh\\napp:x:1000:1000::/home/app:/bin/sh\\n"
>>> group = b"root:x:0:\\napp:x:1000:\\nstaff:x:50:app,other\\n"
>>> resolve_user("app", passwd, group)
ExecUser(uid=1000, gid=1000, additional_gids=(50,))
>>> resolve_user("app:staff", passwd, group)
ExecUser(uid=1000, gid=50, additional_gids=())
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from ..containerd._mounts import Mount

__all__ = [
    "MAX_FILE_BYTES",
    "ExecUser",
    "layer_dirs",
    "needs_lookup",
    "read_image_file",
    "read_user_files",
    "resolve_user",
]

MAX_FILE_BYTES: Final = 1 << 20
_MAX_ID: Final = 2**31 - 1
_OPAQUE_XATTRS: Final = ("trusted.overlay.opaque", "user.overlay.opaque")


class ExecUser(msgspec.Struct, frozen=True):
    """The identity a user spec resolves to: uid, primary gid, supplementary gids."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def needs_lookup(text: str) -> bool:
    """Whether ``user[:group]`` names someone (other than root) the image must resolve.

    Numeric forms and root are taken as they are, without reading the image (as before
    names were supported; docker would also read passwd for a bare uid's primary group).
    """
    if not text:
        return False
    user, _, group = text.partition(":")
    return any(part and part != "root" and not part.isdigit() for part in (user, group))


# -- parsing (pure) ---------------------------------------------------------------------------


class _Passwd(msgspec.Struct, frozen=True):
    name: str
    uid: int
    gid: int


class _Group(msgspec.Struct, frozen=True):
    name: str
    gid: int
    members: tuple[str, ...]


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) <= _MAX_ID else None


def _lines(data: bytes) -> list[list[str]]:
    rows = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _parse_passwd(data: bytes) -> list[_Passwd]:
    entries = []
    for fields in _lines(data):
        if len(fields) < 4:
            continue  # malformed: ignored, as runc ignores what it cannot read
        uid, gid = _number(fields[2]), _number(fields[3])
        if uid is not None and gid is not None:
            entries.append(_Passwd(fields[0], uid, gid))
    return entries


def _parse_group(data: bytes) -> list[_Group]:
    entries = []
    for fields in _lines(data):
        if len(fields) < 3:
            continue
        gid = _number(fields[2])
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        if gid is not None:
            entries.append(_Group(fields[0], gid, members))
    return entries


def resolve_user(text: str, passwd: bytes | None, group: bytes | None) -> ExecUser:
    """``user[:group]`` against the image's passwd and group files (None: absent).

    Raises:
        InvalidArgument: a name that is not in the file, or an id out of range.
    """
    user_part, _, group_part = text.partition(":")
    uid_arg = _number(user_part)
    if user_part and uid_arg is None and user_part.isdigit():
        raise InvalidArgument(f"user {text[:64]!r}: uid out of range", local=True)
    uid, gid, matched = 0, 0, ""
    users = _parse_passwd(passwd or b"")
    if user_part:
        found = next(
            (
                entry
                for entry in users
                if (entry.uid == uid_arg if uid_arg is not None else entry.name == user_part)
            ),
            None,
        )
    else:
        found = next((entry for entry in users if entry.uid == 0), None)
    if found is not None:
        uid, gid, matched = found.uid, found.gid, found.name
    elif uid_arg is not None:
        uid = uid_arg
    elif user_part:
        raise InvalidArgument(
            f"unable to find user {user_part[:64]}: no matching entries in passwd file",
            local=True,
        )
    additional: tuple[int, ...] = ()
    groups = _parse_group(group or b"")
    if group_part:
        gid_arg = _number(group_part)
        if gid_arg is None and group_part.isdigit():
            raise InvalidArgument(f"user {text[:64]!r}: gid out of range", local=True)
        chosen = next(
            (
                entry
                for entry in groups
                if (entry.gid == gid_arg if gid_arg is not None else entry.name == group_part)
            ),
            None,
        )
        if chosen is not None:
            gid = chosen.gid
        elif gid_arg is not None:
            gid = gid_arg
        else:
            raise InvalidArgument(
                f"unable to find group {group_part[:64]}: no matching entries in group file",
                local=True,
            )
    elif matched:
        additional = tuple(entry.gid for entry in groups if matched in entry.members)
    return ExecUser(uid=uid, gid=gid, additional_gids=additional)


# -- reading from a snapshot's layer directories (blocking: run in a thread) ------------------


def layer_dirs(mounts: Sequence[Mount]) -> list[str]:
    """The directories of a prepared snapshot, top layer first (host paths: never shown)."""
    if len(mounts) != 1:
        raise InvalidArgument(f"cannot read an image's files from {len(mounts)} mounts", local=True)
    mount = mounts[0]
    if mount.type in ("bind", "rbind") or "bind" in mount.options or "rbind" in mount.options:
        return [mount.source]
    if mount.type == "overlay":
        upper: list[str] = []
        lower: list[str] = []
        for option in mount.options:
            key, _, value = option.partition("=")
            if key == "upperdir":
                upper = [value]
            elif key == "lowerdir":
                lower = [d for d in value.split(":") if d]
        if lower:
            return upper + lower
    raise InvalidArgument(f"cannot read an image's files from a {mount.type!r} mount", local=True)


class _Absent:
    """Not in this layer: a lower one may have it."""


class _Hidden:
    """Hidden (a whiteout, a non-directory or an opaque directory): absent in the image."""


_ABSENT: Final = _Absent()
_HIDDEN: Final = _Hidden()


def _refuse(image_path: str, what: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"cannot resolve user {what[:64]!r}: {image_path} in the image {why}", local=True
    )


def _is_opaque(fd: int) -> bool:
    for name in _OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(fd, name) == b"y":
                return True
    return False


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _in_layer(root: str, parts: Sequence[str], image_path: str, what: str) -> bytes | object:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        opaque = False
        for depth, name in enumerate(parts):
            last = depth == len(parts) - 1
            shown = "/" + "/".join(parts[: depth + 1])
            try:
                st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
            except FileNotFoundError:
                return _HIDDEN if opaque else _ABSENT
            if _is_whiteout(st):
                return _HIDDEN
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(shown, what, "is a symbolic link")
            if not last:
                if not stat.S_ISDIR(st.st_mode):
                    return _HIDDEN
                try:
                    fds.append(os.open(name, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _refuse(shown, what, "changed while being read") from None
                    raise
                opaque = opaque or _is_opaque(fds[-1])
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(shown, what, "is not a regular file")
            try:
                fd = os.open(name, flags, dir_fd=fds[-1])
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _refuse(shown, what, "is a symbolic link") from None
                raise
            fds.append(fd)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(shown, what, "is not a regular file")
            if st.st_size > MAX_FILE_BYTES:
                raise _refuse(shown, what, f"is over {MAX_FILE_BYTES >> 10} KiB")
            chunks = []
            total = 0
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    raise _refuse(shown, what, f"is over {MAX_FILE_BYTES >> 10} KiB")
                chunks.append(chunk)
            return b"".join(chunks)
        return _ABSENT
    finally:
        for fd in reversed(fds):
            os.close(fd)


def read_image_file(dirs: Sequence[str], path: str, *, what: str) -> bytes | None:
    """The bytes of ``path`` (absolute, in the image) from layer ``dirs`` (top first), or
    None if the image has no such file. ``what`` (the user being resolved) is named in
    errors."""
    parts = [p for p in path.split("/") if p]
    for directory in dirs:
        try:
            found = _in_layer(directory, parts, path, what)
        except InvalidArgument:
            raise
        except OSError as exc:
            raise InvalidArgument(
                f"cannot resolve user {what[:64]!r}: {path} in the image is unreadable "
                f"({os.strerror(exc.errno or 0)})",
                local=True,
            ) from None
        if found is _HIDDEN:
            return None
        if isinstance(found, bytes):
            return found
    return None


def read_user_files(mounts: Sequence[Mount], what: str) -> tuple[bytes | None, bytes | None]:
    """(``/etc/passwd``, ``/etc/group``) of a prepared snapshot; None for a missing one."""
    dirs = layer_dirs(mounts)
    return (
        read_image_file(dirs, "/etc/passwd", what=what),
        read_image_file(dirs, "/etc/group", what=what),
    )
