"""streamer: an event collector and declarative stream processor.

A pipeline is a YAML file naming inputs, a processor chain, schema registries and
named sinks; ``streamer run pipeline.yml`` compiles it into an anyio task graph.
"""

__version__ = "0.1.0"
