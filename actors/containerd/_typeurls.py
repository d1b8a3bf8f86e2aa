"""The type URLs containerd expects inside the protobuf ``Any`` values we send it.

Wire facts, kept with the remote that packs them; ``actors.core.spec`` re-exports the OCI
ones as part of its API.
"""

from __future__ import annotations

from typing import Final

SPEC_TYPE_URL: Final = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL: Final = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_TYPE_URL: Final = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNC_OPTIONS_TYPE_URL: Final = "containerd.runc.v1.Options"
RUNC_CHECKPOINT_OPTIONS_TYPE_URL: Final = "containerd.runc.v1.CheckpointOptions"
