"""Bind-mount sources, resolved without following a path a container could have written.

runc 1.1 hands a bind source to ``mount(2)`` as a string, and the kernel resolves it in the
host's view at mount time, following symlinks. A container that may write under an allowed
bind root can therefore swap a directory for a symlink to ``/etc`` between any check of
ours and runc's mount, and a ``realpath`` check cannot prevent it (issue 10, item 3).

So a source is never given to runc by its path. :func:`open_source` walks it from the
operator's root one component at a time with ``openat(O_PATH|O_NOFOLLOW)``, refusing any
symlink, and every check (type, hard links, sockets, protected paths) runs on the pinned
file descriptor. :func:`stage` then bind-mounts that descriptor (``/proc/self/fd/N``, which
the kernel resolves to the pinned inode, not by name) onto a fresh target inside a
root-only staging directory under ``/run`` (which no container may bind), and the spec
names that target. What the container later does to the original path changes nothing:
runc mounts the staged mount, which is the directory we checked. This is what Kubernetes
does for subPath since CVE-2017-1002101.

The staged mounts live as long as the container record: :func:`unstage` removes them when
the gateway deletes the container. A host reboot empties the staging directory; the task
then fails to start with a mount error, never with another path.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import posixpath
import secrets
import stat
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Final

from ..errors import InvalidArgument, PermissionDenied

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_STAGING_DIR",
    "PinnedSource",
    "open_source",
    "socket_paths",
    "stage",
    "unstage",
]

log = logging.getLogger("containerd_actors.gateway")

#: Where staged bind sources are mounted; under /run, which no container may bind.
DEFAULT_STAGING_DIR: Final = "/run/containerd-actors/binds"

_MS_BIND: Final = 0x1000
_MNT_DETACH: Final = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


class PinnedSource:
    """An open ``O_PATH`` descriptor on a checked bind source; close it when done."""

    def __init__(self, fd: int, info: os.stat_result, resolved: str) -> None:
        self.fd = fd
        self.info = info
        self.resolved = resolved

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def socket_paths() -> set[str]:
    """Paths of the unix sockets bound in our network namespace (from /proc/net/unix)."""
    paths: set[str] = set()
    with (
        contextlib.suppress(OSError),
        open("/proc/net/unix", encoding="utf-8", errors="replace") as f,
    ):
        next(f, None)
        for line in f:
            fields = line.split(None, 7)
            if len(fields) == 8 and fields[7].startswith("/"):
                paths.add(posixpath.normpath(fields[7].rstrip("\n")))
    return paths


def _inside(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(root)


def open_source(
    what: str, source: str, roots: Iterable[str], protected: Iterable[str]
) -> PinnedSource:
    """Pin ``source`` beneath one of ``roots`` without following any symlink, and check it.

    Args:
        what: names the request in messages.
        source: the absolute path the caller asked for.
        roots: the operator's allowed bind roots (trusted: resolved with realpath).
        protected: host paths the source may not be, lie inside, or contain.

    Raises:
        PermissionDenied: outside every root, a symlink on the way, a protected path, a
            socket (or a directory holding a bound socket), or not a directory or file.
        InvalidArgument: the path is malformed or does not exist.
    """
    label = f"bind mount source {source!r}"
    if not posixpath.isabs(source) or "\x00" in source:
        raise InvalidArgument(f"{what}: {label} must be an absolute path", local=True)
    literal = posixpath.normpath(source)
    for root in roots:
        real_root = os.path.realpath(root)
        for base in (posixpath.normpath(root), real_root):
            if _inside(literal, base):
                rel = PurePosixPath(literal).relative_to(base).parts
                pinned = _walk(what, label, real_root, rel)
                try:
                    _check(what, label, pinned, protected)
                except BaseException:
                    pinned.close()
                    raise
                return pinned
    raise PermissionDenied(f"{what}: {label} is outside the allowed host directories", local=True)


def _walk(what: str, label: str, root: str, parts: tuple[str, ...]) -> PinnedSource:
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        raise InvalidArgument(f"{what}: {label} cannot be opened", local=True) from None
    try:
        for part in parts:
            if part in ("..", "."):
                raise InvalidArgument(f"{what}: {label} must not contain '..'", local=True)
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise InvalidArgument(f"{what}: {label} does not exist", local=True)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise InvalidArgument(f"{what}: {label} does not exist", local=True) from None
            except OSError:
                raise InvalidArgument(f"{what}: {label} cannot be opened", local=True) from None
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise PermissionDenied(
                    f"{what}: {label} goes through a symbolic link; bind sources are "
                    "resolved without following links",
                    local=True,
                )
        info = os.fstat(fd)
        if info.st_nlink == 0:
            raise InvalidArgument(f"{what}: {label} does not exist", local=True)
        # Where the pinned inode really is (the kernel's name for it), for the path checks.
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        # Removed or renamed while we walked (a container may be racing us).
        os.close(fd)
        raise InvalidArgument(
            f"{what}: {label} changed while it was being opened", local=True
        ) from None
    except BaseException:
        os.close(fd)
        raise
    if not _inside(resolved, root):
        os.close(fd)
        raise PermissionDenied(
            f"{what}: {label} is outside the allowed host directories", local=True
        )
    return PinnedSource(fd, info, resolved)


def _check(what: str, label: str, pinned: PinnedSource, protected: Iterable[str]) -> None:
    resolved, info = pinned.resolved, pinned.info
    for path in protected:
        # Equal, inside (except for "/", which contains everything), or containing it: an
        # rbind of a parent brings the protected tree along.
        if _inside(path, resolved) or (path != "/" and _inside(resolved, path)):
            raise PermissionDenied(
                f"{what}: {label} is, contains or lies inside a protected host path", local=True
            )
    if stat.S_ISSOCK(info.st_mode):
        raise PermissionDenied(
            f"{what}: {label} is a unix socket; sockets cannot be mounted", local=True
        )
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise PermissionDenied(f"{what}: {label} is not a directory or regular file", local=True)
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        # A hard link could be /etc/shadow under another name.
        raise PermissionDenied(f"{what}: {label} is a file with several hard links", local=True)
    if stat.S_ISDIR(info.st_mode) and any(_inside(s, resolved) for s in socket_paths()):
        # A host service's socket would let the container talk to it as root.
        raise PermissionDenied(
            f"{what}: {label} contains a unix socket a host service listens on", local=True
        )


def _mount(source: str, target: str) -> None:
    if _libc.mount(source.encode(), target.encode(), None, _MS_BIND, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), target)


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), target)


def stage(
    pinned: list[PinnedSource], staging_dir: str, container_id: str, namespace: str = ""
) -> tuple[str, list[str]]:
    """Bind-mount each pinned source onto a fresh target; the directory and the targets.

    The directory is new (random suffix) and root-only, so nothing else can have put a
    symlink there. On failure everything staged so far is removed. Its name starts with
    ``namespace@`` (no namespace or container id holds an ``@``), so a serve can tell its
    own staged binds from another namespace's in the shared directory
    (:func:`staged_entries`).
    """
    os.makedirs(staging_dir, mode=0o700, exist_ok=True)
    if os.stat(staging_dir, follow_symlinks=False).st_uid != os.getuid():
        raise PermissionError(f"staging directory {staging_dir} is not ours")
    owner = f"{namespace}@" if namespace else ""
    directory = os.path.join(staging_dir, f"{owner}{container_id}.{secrets.token_hex(4)}")
    os.mkdir(directory, 0o700)
    targets: list[str] = []
    try:
        for index, source in enumerate(pinned):
            target = os.path.join(directory, str(index))
            if stat.S_ISDIR(source.info.st_mode):
                os.mkdir(target, 0o700)
            else:
                os.close(
                    os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
                )
            _mount(f"/proc/self/fd/{source.fd}", target)
            targets.append(target)
    except BaseException:
        unstage(directory, staging_dir)
        raise
    return directory, targets


def staged_entries(staging_dir: str, namespace: str) -> list[tuple[str, str]]:
    """(directory, container id) of every staging directory :func:`stage` made for
    ``namespace``."""
    prefix = f"{namespace}@"
    try:
        names = os.listdir(staging_dir)
    except FileNotFoundError:
        return []
    return [
        (os.path.join(staging_dir, name), name[len(prefix) :].rsplit(".", 1)[0])
        for name in sorted(names)
        if name.startswith(prefix) and "." in name[len(prefix) :]
    ]


def unstage(directory: str, staging_dir: str) -> None:
    """Unmount and remove a staging directory made by :func:`stage` (missing is fine)."""
    if not _inside(posixpath.normpath(directory), staging_dir) or directory == staging_dir:
        log.warning("not unstaging %s: outside %s", directory, staging_dir)
        return
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        target = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            _umount(target)
        try:
            if os.path.isdir(target) and not os.path.islink(target):
                os.rmdir(target)
            else:
                os.unlink(target)
        except OSError:
            log.warning("cannot remove staged bind %s", target, exc_info=True)
    with contextlib.suppress(OSError):
        os.rmdir(directory)
