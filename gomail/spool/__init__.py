"""The durable on-disk mail queue."""
