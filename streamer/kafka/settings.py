"""How streamer reaches Kafka: the settings every Kafka connector takes, and the aiokafka options made from them.

Declared once, as annotated types (each with its description and examples), the :class:`Tls` and
:class:`Sasl` structs and the :class:`KafkaConnection` struct built from them. Connector specs declare
the same keys with these types (``brokers: Brokers``, ``tls: TlsOption``) and turn them into a
:class:`KafkaConnection` for :func:`client_options`, so the sink and the input are configured and
documented alike. (msgspec cannot mix two structs with fields into one spec, hence types rather than a
base struct; the same holds for :mod:`streamer.postgres.settings` and :mod:`streamer.aws.settings`.)

Secrets: the SASL password is masked in every representation (:class:`Sasl`'s ``repr``, hence the
spec's), and :func:`describe` masks it in error messages should a library quote it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec

from streamer.core.config import PathT

__all__ = [
    "Brokers",
    "ClientId",
    "KafkaConnection",
    "MetadataMaxAge",
    "RequestTimeout",
    "Sasl",
    "SaslOption",
    "Tls",
    "TlsOption",
    "broker_list",
    "check_connection",
    "client_options",
    "describe",
]

_MASK = "***"

Brokers = Annotated[
    list[str] | str,
    msgspec.Meta(
        description="Bootstrap brokers, `host:port`, as a list or one comma-separated string.",
        examples=[["kafka-1.internal:9092", "kafka-2.internal:9092"], "${KAFKA_BROKERS}"],
    ),
]
ClientId = Annotated[
    str,
    msgspec.Meta(description="Client id the brokers see in their logs and quotas.", examples=["streamer"]),
]
RequestTimeout = Annotated[
    float,
    msgspec.Meta(
        gt=0,
        description="Seconds a request to a broker (a produce, a metadata lookup) may take; a batch not "
        "acknowledged within it fails and is retried by the sink worker.",
        examples=[30],
    ),
]
MetadataMaxAge = Annotated[
    float,
    msgspec.Meta(
        gt=0,
        description="Seconds after which the cluster layout (partitions, leaders) is fetched again even "
        "without a change being noticed.",
        examples=[300],
    ),
]


class Tls(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """TLS to the brokers; `tls: {}` uses the system's CA certificates."""

    ca_file: Annotated[
        str | None,
        msgspec.Meta(
            description="CA certificate file (PEM) the brokers' certificates must chain to; default: the system's.",
            examples=["/etc/ssl/certs/kafka-ca.pem"],
        ),
    ] = None
    cert_file: Annotated[
        str | None,
        msgspec.Meta(description="Client certificate file (PEM), for mutual TLS.", examples=["/run/secrets/kafka.crt"]),
    ] = None
    key_file: Annotated[
        str | None,
        msgspec.Meta(description="Private key of `cert_file` (PEM).", examples=["/run/secrets/kafka.key"]),
    ] = None
    verify_hostname: Annotated[
        bool,
        msgspec.Meta(
            description="Check that a broker's certificate names the host connected to. Turn it off only for "
            "brokers reached by an address their certificate does not list.",
            examples=[True],
        ),
    ] = True


class Sasl(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """SASL authentication (over TLS when `tls` is set too)."""

    mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        msgspec.Meta(description="SASL mechanism the brokers accept.", examples=["SCRAM-SHA-512"]),
    ]
    username: Annotated[str, msgspec.Meta(description="User name.", examples=["streamer"])]
    password: Annotated[
        str,
        msgspec.Meta(
            description="Password; masked in every message. Write it as a variable (`${...}`), not in the file.",
            examples=["${KAFKA_PASSWORD}"],
        ),
    ]

    def __repr__(self) -> str:
        # A repr ends up in logs and tracebacks: never the password.
        return f"Sasl(mechanism={self.mechanism!r}, username={self.username!r}, password={_MASK!r})"


TlsOption = Annotated[
    Tls | None,
    msgspec.Meta(description="TLS to the brokers (`{}` for the system's CAs); default: plaintext."),
]
SaslOption = Annotated[
    Sasl | None,
    msgspec.Meta(
        description="SASL authentication: `mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), `username`, `password`.",
        examples=[{"mechanism": "SCRAM-SHA-512", "username": "streamer", "password": "${KAFKA_PASSWORD}"}],
    ),
]


class KafkaConnection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which Kafka cluster, and how to reach it: brokers, TLS, SASL, timeouts."""

    brokers: Brokers
    client_id: ClientId = "streamer"
    tls: TlsOption = None
    sasl: SaslOption = None
    request_timeout: RequestTimeout = 30.0
    metadata_max_age: MetadataMaxAge = 300.0

    @property
    def where(self) -> str:
        """The brokers, for messages."""
        return ", ".join(broker_list(self.brokers))

    @property
    def security_protocol(self) -> str:
        if self.sasl is not None:
            return "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"
        return "SSL" if self.tls is not None else "PLAINTEXT"


def broker_list(brokers: list[str] | str) -> list[str]:
    """``brokers`` as a list of ``host:port`` (a comma-separated string split, blanks dropped)."""
    items = brokers.split(",") if isinstance(brokers, str) else brokers
    return [item.strip() for item in items if item.strip()]


def check_connection(connection: KafkaConnection) -> Iterator[tuple[PathT, str]]:
    """Problems with connection settings, as a spec's ``check()`` reports them (paths are the spec's keys)."""
    brokers = broker_list(connection.brokers)
    if not brokers:
        yield ("brokers",), "give at least one broker, as host:port"
    for broker in brokers:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            yield ("brokers",), f"{broker!r} is not host:port (for example kafka-1.internal:9092)"
    tls = connection.tls
    if tls is not None and (tls.cert_file is None) != (tls.key_file is None):
        yield ("tls", "cert_file" if tls.cert_file is None else "key_file"), "give both `cert_file` and `key_file`"


def client_options(connection: KafkaConnection) -> dict[str, Any]:
    """Keyword arguments of aiokafka's clients (producer, consumer, admin) for ``connection``."""
    options: dict[str, Any] = {
        "bootstrap_servers": broker_list(connection.brokers),
        "client_id": connection.client_id,
        "request_timeout_ms": int(connection.request_timeout * 1000),
        "metadata_max_age_ms": int(connection.metadata_max_age * 1000),
        "security_protocol": connection.security_protocol,
    }
    tls = connection.tls
    if tls is not None:
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(cafile=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
        context.check_hostname = tls.verify_hostname
        options["ssl_context"] = context
    sasl = connection.sasl
    if sasl is not None:
        options["sasl_mechanism"] = sasl.mechanism
        options["sasl_plain_username"] = sasl.username
        options["sasl_plain_password"] = sasl.password
    return options


def describe(exc: BaseException, connection: KafkaConnection | None = None) -> str:
    """``Type: first line of the message``, with the SASL password masked should the message quote it."""
    lines = str(exc).strip().splitlines()
    name = type(exc).__name__
    # aiokafka's messages often start with the class name already.
    text = (lines[0] if lines[0].startswith(name) else f"{name}: {lines[0]}") if lines else name
    if connection is not None and connection.sasl is not None and connection.sasl.password:
        text = text.replace(connection.sasl.password, _MASK)
    return text
