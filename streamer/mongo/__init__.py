"""Everything streamer runs against MongoDB, and the connection settings they share.

- :mod:`streamer.mongo.settings`: the connection settings (URI, timeouts) every MongoDB connector
  takes, the one place an ``AsyncMongoClient`` is made from them, and the URI redaction used in every
  message (a password never reaches a log);
- :mod:`streamer.mongo.bson_json`: the rule that turns BSON values into JSON (Extended JSON v2);
- :mod:`streamer.mongo.events`: the event a change becomes (its payload, its deterministic id), and
  :mod:`streamer.mongo.schema` the built-in schema that describes it;
- :mod:`streamer.mongo.errors`: what pymongo's errors mean for a change stream (retry, stop, history lost);
- :mod:`streamer.mongo.tokens`: where a change stream's resume token is kept (a file or a PostgreSQL
  table), written only once the sinks hold the changes before it;
- :mod:`streamer.mongo.change_stream`: the ``mongo_change_stream`` input.

The catalog names the connectors by type (``input: mongo_change_stream``); this package only groups
them. Modules import pymongo inside functions, so loading a spec never needs it.
"""
