"""Pure parts of issue 10's fixes: host-path redaction and half-open handshake admission."""

from __future__ import annotations

import pytest
import trio

from actors import InvalidArgument, NotFound, Unknown
from actors.control._protocol import error_response, redact_host_paths
from actors.control._wsserver import WebsocketListener

RUNC_MOUNT = (
    "Tasks.Create: failed to create shim task: OCI runtime create failed: runc create failed: "
    "unable to start container process: error during container init: error mounting "
    '"/run/containerd-actors/binds/web.1a2b/0" to rootfs at "/data": mount '
    "/run/containerd-actors/binds/web.1a2b/0:/run/containerd/io.containerd.runtime.v2.task/ns/"
    "web/rootfs/data (via /proc/self/fd/6), flags: 0x5000: no such file or directory: unknown"
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (RUNC_MOUNT, None),
        (
            "dial unix:///run/containerd/s/4f2c: connect: refused",
            "dial unix:<path>: connect: refused",
        ),
        (
            'exec: "/bin/nope": stat /bin/nope: no such file',
            'exec: "<path>": stat <path>: no such file',
        ),
        (
            "no such container: web-1 (sha256:abc, a/b)",
            "no such container: web-1 (sha256:abc, a/b)",
        ),
        ("open /sys/fs/cgroup/ns/web/memory.max: busy", "open <path>: busy"),
    ],
)
def test_absolute_paths_are_redacted(raw: str, expected: str | None) -> None:
    redacted = redact_host_paths(raw)
    assert "/run" not in redacted and "/proc" not in redacted and "/sys" not in redacted
    if expected is not None:
        assert redacted == expected
    else:
        assert "no such file or directory" in redacted


def test_only_remote_errors_are_redacted() -> None:
    remote = error_response(1, Unknown(RUNC_MOUNT))
    assert "/run" not in remote.message
    assert "server log reference" in remote.message
    assert remote.data is not None and remote.data["local"] is False
    # Our own messages name what the caller sent and stay as they are.
    local = error_response(
        2, InvalidArgument("bind mount source '/srv/x' does not exist", local=True)
    )
    assert local.message == "bind mount source '/srv/x' does not exist"
    plain = error_response(3, NotFound("no such container: web"))
    assert plain.message == "no such container: web"


async def _never() -> None:
    await trio.sleep_forever()


async def test_pending_handshakes_evict_the_oldest() -> None:
    listener = WebsocketListener(
        lambda request: _never(),
        [],
        max_message_size=1,
        handshake_timeout=1,
        on_failed_handshake=lambda: None,
        on_error=lambda: None,
        max_pending=4,
        max_pending_per_peer=2,
    )
    scopes = [trio.CancelScope() for _ in range(6)]
    first = listener._admit("10.0.0.1", scopes[0])
    listener._admit("10.0.0.1", scopes[1])
    listener._admit("10.0.0.1", scopes[2])  # over the per-peer bound: the peer's oldest goes
    assert [s.cancel_called for s in scopes[:3]] == [True, False, False]
    listener._admit("10.0.0.2", scopes[3])
    listener._admit("10.0.0.3", scopes[4])
    listener._admit("10.0.0.4", scopes[5])  # over the total: the oldest of all goes
    assert [s.cancel_called for s in scopes] == [True, True, False, False, False, False]
    assert listener.pending == 4
    listener._release(first)  # already evicted: a no-op
    assert listener.pending == 4
