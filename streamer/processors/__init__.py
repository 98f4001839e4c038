"""Processors: steps run inline, in order, over each input unit's envelopes."""
