"""The control plane: websocket server, its sans-IO protocol, policy, client and CLI."""
