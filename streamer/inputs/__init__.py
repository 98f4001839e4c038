"""Inputs: one module per connector."""
