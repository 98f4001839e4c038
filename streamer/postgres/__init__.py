"""Everything streamer runs against PostgreSQL, and the connection settings they share.

- :mod:`streamer.postgres.settings`: the connection settings (DSN, pool, timeouts, TLS) every
  PostgreSQL connector takes, the one place an asyncpg pool or connection is made from them,
  identifier checks and quoting, and the DSN redaction used in every message (a password never
  reaches a log);
- :mod:`streamer.postgres.sink`: the ``postgres`` sink (binary COPY, idempotent on the event id),
  with :mod:`streamer.postgres.rows` turning envelopes into its rows;
- :mod:`streamer.postgres.registry`: the ``postgres`` schema repository.

The catalog names the connectors by type (``sink: postgres``, ``repository: postgres``); this package
only groups them. Modules import asyncpg inside functions, so loading a spec never needs it.
"""
