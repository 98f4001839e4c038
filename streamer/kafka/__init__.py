"""Kafka: what every Kafka connector shares and the connectors themselves.

``settings.py`` declares the connection settings (brokers, TLS, SASL, timeouts) once and turns them into
aiokafka client options; ``sink.py`` writes events as records (``records.py``: how an envelope becomes a
record's topic, key and headers); ``input.py`` reads records as events.
"""
