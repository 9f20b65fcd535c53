"""Admin API routes (being written)."""
