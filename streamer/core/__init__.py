"""The core: messages, acknowledgement, the pipeline graph and its runtime.

Nothing in this package imports a connector; connectors import the core.
"""
