"""Add fixed tags to every envelope (deployment, region, pipeline version...).

The envelope's other annotations (id, collector time, protocol, source) are set
where the event enters, by its input; this step adds what the pipeline knows.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from streamer.core.components import Processor, ProcessorSpec
from streamer.core.envelope import Envelope

__all__ = ["Annotate", "AnnotateSpec"]


class AnnotateSpec(ProcessorSpec, tag="annotate", kw_only=True):
    """Add tags to every envelope."""

    tags: Annotated[
        dict[str, str],
        msgspec.Meta(description="Tags set on every envelope.", examples=[{"env": "prod", "region": "eu"}]),
    ] = msgspec.field(default_factory=dict)


class Annotate(Processor):
    Spec = AnnotateSpec
    spec: AnnotateSpec

    async def process(self, envelopes: list[Envelope]) -> list[Envelope]:
        return self.process_nowait(envelopes)

    def process_nowait(self, envelopes: list[Envelope]) -> list[Envelope]:
        tags = self.spec.tags
        if tags:
            for envelope in envelopes:
                envelope.tags = tags if envelope.tags is None else {**envelope.tags, **tags}
        return envelopes
