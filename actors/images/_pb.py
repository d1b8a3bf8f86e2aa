"""The generated protobuf modules of the image store, imported in this one place.

Everything under ``actors.images`` imports these names from here, so moving the generated
modules means editing only this file.
"""

from __future__ import annotations

from ..containerd.pb.containerd.services.content.v1 import content_grpc, content_pb2
from ..containerd.pb.containerd.services.diff.v1 import diff_grpc, diff_pb2
from ..containerd.pb.containerd.services.images.v1 import images_grpc, images_pb2
from ..containerd.pb.containerd.services.leases.v1 import leases_grpc, leases_pb2
from ..containerd.pb.containerd.services.snapshots.v1 import snapshots_grpc, snapshots_pb2
from ..containerd.pb.containerd.types import descriptor_pb2, mount_pb2

__all__ = [
    "content_grpc",
    "content_pb2",
    "descriptor_pb2",
    "diff_grpc",
    "diff_pb2",
    "images_grpc",
    "images_pb2",
    "leases_grpc",
    "leases_pb2",
    "mount_pb2",
    "snapshots_grpc",
    "snapshots_pb2",
]
