"""Sinks: one module per connector."""
