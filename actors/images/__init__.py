"""Images: containerd's content, image, lease, snapshot and diff services, and registries."""
