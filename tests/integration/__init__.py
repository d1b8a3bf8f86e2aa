"""Integration tests against the real containerd + runc started by the session (root)."""
