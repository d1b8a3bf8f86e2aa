"""``/etc/hosts`` and ``/etc/resolv.conf`` for a container, as docker provides them.

The files are written into a fresh directory per container under a root the server owns,
outside the container's rootfs, and bind-mounted read-only over the container's paths:
nothing is ever written into a rootfs (a hostile one could have made ``etc/hosts`` a
symlink to a host file), and every open is relative to a directory we just created, with
``O_NOFOLLOW`` and ``O_EXCL``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
from typing import Final

from ..core.spec import Mount

__all__ = ["hosts_file", "remove_container_files", "resolv_conf", "write_container_files"]

# Docker's fallback when the host's resolvers are all on loopback (unreachable from the
# container's own network namespace).
DEFAULT_NAMESERVERS: Final = ("8.8.8.8", "8.8.4.4")
_RO_BIND: Final = ["rbind", "ro", "nosuid", "nodev", "noexec"]


def hosts_file(hostname: str) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "ff00::0\tip6-mcastprefix\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
        f"127.0.1.1\t{hostname}\n"
    )


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def resolv_conf(host_text: str) -> str:
    """The host's resolv.conf without loopback nameservers (docker's filter)."""
    lines: list[str] = []
    servers = 0
    for line in host_text.splitlines():
        fields = line.split()
        if fields[:1] == ["nameserver"] and len(fields) > 1:
            if _loopback(fields[1]):
                continue
            servers += 1
        lines.append(line)
    if not servers:
        lines.extend(f"nameserver {server}" for server in DEFAULT_NAMESERVERS)
    return "\n".join(lines) + "\n"


def _read_host_resolv_conf() -> str:
    try:
        with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as handle:
            return handle.read(65536)
    except OSError:
        return ""


def write_container_files(root: str, container_id: str, hostname: str) -> list[Mount]:
    """Write the container's files under ``root/<id>`` and return their read-only mounts."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        # A directory left by an earlier container of the same id is ours: start afresh.
        remove_container_files(root, container_id)
        os.mkdir(container_id, 0o755, dir_fd=root_fd)
        dir_fd = os.open(container_id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    mounts: list[Mount] = []
    try:
        for name, text in (
            ("hosts", hosts_file(hostname)),
            ("resolv.conf", resolv_conf(_read_host_resolv_conf())),
        ):
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd
            )
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            mounts.append(
                Mount(
                    destination=f"/etc/{name}",
                    type="bind",
                    source=os.path.join(root, container_id, name),
                    options=list(_RO_BIND),
                )
            )
    finally:
        os.close(dir_fd)
    return mounts


def remove_container_files(root: str, container_id: str) -> None:
    path = os.path.join(root, container_id)
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)
