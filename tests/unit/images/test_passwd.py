"""Resolving ``USER name[:group]`` from an image's files: docker's rules, overlayfs' layers,
and a hostile image's links, FIFOs and huge files refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.containerd._mounts import Mount
from actors.errors import InvalidArgument
from actors.images._passwd import (
    MAX_FILE_BYTES,
    ExecUser,
    layer_dirs,
    needs_lookup,
    read_image_file,
    resolve_user,
)
from actors.images._runconfig import UNRESOLVED_USER, merge_run_config

PASSWD = b"root:x:0:0::/root:/bin/sh\nbad line\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:50:app,bob\nwheel:x:10:root\napp:x:1000:\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app", ExecUser(1000, 1000, (50,))),
        ("1000", ExecUser(1000, 1000, (50,))),
        ("app:staff", ExecUser(1000, 50)),
        ("app:7", ExecUser(1000, 7)),
        ("4242", ExecUser(4242, 0)),
        ("4242:staff", ExecUser(4242, 50)),
        ("root", ExecUser(0, 0, (10,))),
    ],
)
def test_docker_rules(text: str, expected: ExecUser) -> None:
    assert resolve_user(text, PASSWD, GROUP) == expected


def test_unknown_names_and_missing_files() -> None:
    with pytest.raises(InvalidArgument, match="unable to find user ghost"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(InvalidArgument, match="unable to find user app"):
        resolve_user("app", None, None)
    with pytest.raises(InvalidArgument, match="unable to find group nope"):
        resolve_user("app:nope", PASSWD, GROUP)
    with pytest.raises(InvalidArgument, match="out of range"):
        resolve_user("99999999999", PASSWD, GROUP)
    assert resolve_user("1000:50", None, None) == ExecUser(1000, 50)


def test_only_names_need_the_image() -> None:
    assert [needs_lookup(t) for t in ("", "root", "0:0", "1000", "1000:5", "root:root")] == [
        False
    ] * 6
    assert all(needs_lookup(t) for t in ("app", "1000:staff", "app:5", "www-data:www-data"))
    run = merge_run_config(None, args=["true"], user="app")
    assert (run.user, run.user_lookup) == (UNRESOLVED_USER, "app")
    with pytest.raises(InvalidArgument, match="invalid user or group name"):
        merge_run_config(None, args=["true"], user="../etc")


def test_layer_dirs_of_overlay_and_bind_mounts() -> None:
    overlay = Mount(
        type="overlay",
        source="overlay",
        options=("index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l2:/l1"),
    )
    assert layer_dirs([overlay]) == ["/u", "/l2", "/l1"]
    assert layer_dirs([Mount(type="bind", source="/n", options=("rbind", "rw"))]) == ["/n"]
    with pytest.raises(InvalidArgument, match="'tmpfs'"):
        layer_dirs([Mount(type="tmpfs", source="tmpfs")])


def layers(tmp_path: Path, count: int) -> list[Path]:
    dirs = [tmp_path / f"layer{i}" for i in range(count)]
    for d in dirs:
        (d / "etc").mkdir(parents=True)
    return dirs  # top first


def test_top_layer_wins_whiteouts_and_opaque_dirs_hide(tmp_path: Path) -> None:
    top, middle, bottom = layers(tmp_path, 3)
    (bottom / "etc" / "passwd").write_bytes(b"bottom\n")
    (bottom / "etc" / "group").write_bytes(b"bottom\n")
    (middle / "etc" / "passwd").write_bytes(b"middle\n")
    dirs = [str(top), str(middle), str(bottom)]
    assert read_image_file(dirs, "/etc/passwd", what="app") == b"middle\n"
    assert read_image_file(dirs, "/etc/group", what="app") == b"bottom\n"
    assert read_image_file(dirs, "/etc/shadow", what="app") is None
    if os.geteuid() != 0:
        pytest.skip("whiteouts and trusted xattrs need root")
    os.mknod(top / "etc" / "passwd", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    assert read_image_file(dirs, "/etc/passwd", what="app") is None
    os.setxattr(middle / "etc", "trusted.overlay.opaque", b"y")
    assert read_image_file(dirs, "/etc/group", what="app") is None


def test_links_fifos_and_huge_files_are_refused(tmp_path: Path) -> None:
    (top,) = layers(tmp_path, 1)
    host = tmp_path / "host-secret"
    host.write_bytes(b"secret\n")
    (top / "etc" / "passwd").symlink_to(host)
    with pytest.raises(InvalidArgument, match="/etc/passwd in the image is a symbolic link"):
        read_image_file([str(top)], "/etc/passwd", what="app")
    (top / "etc" / "passwd").unlink()
    os.mkfifo(top / "etc" / "passwd")
    with pytest.raises(InvalidArgument, match="not a regular file") as caught:
        read_image_file([str(top)], "/etc/passwd", what="app")
    assert str(tmp_path) not in caught.value.message
    (top / "etc" / "passwd").unlink()
    (top / "etc" / "passwd").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(InvalidArgument, match="is over"):
        read_image_file([str(top)], "/etc/passwd", what="app")
    (top / "etc" / "passwd").unlink()
    (top / "etc").rmdir()
    (top / "etc").symlink_to(host.parent)
    with pytest.raises(InvalidArgument, match="/etc in the image is a symbolic link"):
        read_image_file([str(top)], "/etc/passwd", what="app")
