"""Getting queued mail to its destination."""
