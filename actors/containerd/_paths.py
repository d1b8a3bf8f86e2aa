"""Where things live by default (containerd's socket, our state): a leaf module, so the CLI
and the program's entry point need not import the daemon side (gRPC stubs, the embedded
containerd's machinery) to know them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_ADDRESS", "default_state_root"]

DEFAULT_ADDRESS: Final = "/run/containerd/containerd.sock"


def default_state_root() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/containerd-actors")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "containerd-actors"
