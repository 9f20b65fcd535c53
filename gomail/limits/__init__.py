"""Rate limits on mail intake."""
