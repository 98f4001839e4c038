"""HTTP protocols: one route connector per module."""
