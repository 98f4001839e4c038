"""The Snowplow tracker protocol: ``GET /i``, ``POST /com.snowplowanalytics.snowplow/tp2``, ``GET /r/tp2``.

:mod:`.route` holds the config and the HTTP handlers; :mod:`.events` turns
tracker fields into envelopes (the hot path). See ``docs/protocols.md``.
"""

from streamer.protocols.snowplow.events import ATOMIC_SCHEMA as ATOMIC_SCHEMA
from streamer.protocols.snowplow.events import NETWORK_USER_ID as NETWORK_USER_ID
from streamer.protocols.snowplow.events import EventBuilder as EventBuilder
from streamer.protocols.snowplow.route import PIXEL as PIXEL
from streamer.protocols.snowplow.route import RedirectSpec as RedirectSpec
from streamer.protocols.snowplow.route import SnowplowRoute as SnowplowRoute
from streamer.protocols.snowplow.route import SnowplowSpec as SnowplowSpec

__all__ = ["ATOMIC_SCHEMA", "NETWORK_USER_ID", "PIXEL", "EventBuilder", "RedirectSpec", "SnowplowRoute", "SnowplowSpec"]
