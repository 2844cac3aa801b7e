"""Long-running processes: serve, the projector, the embedded nats-server, the CLI."""
