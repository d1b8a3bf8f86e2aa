"""Generated protobuf/grpclib modules for the containerd API subset we use."""
