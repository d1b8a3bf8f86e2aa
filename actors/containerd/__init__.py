"""The containerd connection: the typed remote, the asyncio bridge, the embedded daemon."""
