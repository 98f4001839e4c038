"""The built-in connector table: type name -> ``module:Class``.

Modules are imported only when a pipeline names them (or when ``streamer schema``
needs every spec).
"""

from __future__ import annotations

from streamer.core.catalog import Catalog

BUILTIN: dict[str, dict[str, str]] = {
    "input": {
        "http": "streamer.inputs.http:HttpInput",
        "file": "streamer.inputs.file:FileInput",
        "stdin": "streamer.inputs.stdin:StdinInput",
        "mongo_change_stream": "streamer.mongo.change_stream:MongoChangeStreamInput",
        "postgres_cdc": "streamer.postgres.cdc:PostgresCdcInput",
        "kafka": "streamer.kafka.input:KafkaInput",
    },
    "processor": {
        "decode": "streamer.processors.decode:Decode",
        "validate": "streamer.processors.validate:Validate",
        "annotate": "streamer.processors.annotate:Annotate",
    },
    "sink": {
        "stdout": "streamer.sinks.stdout:StdoutSink",
        "file": "streamer.sinks.file:FileSink",
        "blackhole": "streamer.sinks.blackhole:BlackholeSink",
        "postgres": "streamer.postgres.sink:PostgresSink",
        "kafka": "streamer.kafka.sink:KafkaSink",
    },
    "repository": {
        "file": "streamer.registry.file:FileRepository",
        "http": "streamer.registry.http:HttpRepository",
        "s3": "streamer.aws.registry:S3Repository",
        "postgres": "streamer.postgres.registry:PostgresRepository",
        "builtin": "streamer.registry.builtin:BuiltinRepository",
    },
    "route": {
        "self_describing": "streamer.protocols.self_describing:SelfDescribingRoute",
        "snowplow": "streamer.protocols.snowplow:SnowplowRoute",
        "schemas": "streamer.protocols.schemas:SchemasRoute",
        "cloudevents": "streamer.protocols.cloudevents:CloudEventsRoute",
        "webhook": "streamer.protocols.webhook:WebhookRoute",
        "pixel": "streamer.protocols.pixel:PixelRoute",
    },
}


IMPLICIT: dict[str, list[str]] = {
    # The io.streamer schemas (permissive webhook, pixel and CloudEvent data; Snowplow atomic events)
    # resolve in every pipeline without configuration.
    "repository": ["builtin"],
}


def default_catalog() -> Catalog:
    return Catalog(BUILTIN, implicit=IMPLICIT)
