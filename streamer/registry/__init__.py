"""Schema repositories: one module per backend, behind :class:`streamer.core.registry.Repository`."""
