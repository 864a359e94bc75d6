"""What every stcast Kafka client is given besides the bootstrap servers: TLS and SASL."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context

from ..settings import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's consumer, producer and admin client."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.endswith("SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile or None,
            certfile=settings.ssl_certfile or None,
            keyfile=settings.ssl_keyfile or None,
        )
    if settings.security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    return options


def producer_options(settings: Settings) -> dict[str, Any]:
    """``client_options`` plus the codec of the record batches a producer writes."""
    codec = None if settings.compression == "none" else settings.compression
    return {**client_options(settings), "compression_type": codec}


def topic_reader(settings: Settings, *topics: str) -> AIOKafkaConsumer:
    """A consumer of ``topics`` from the start of their retention, in no group: it commits
    nothing and every instance reads everything (models, ticks history, the demo's view)."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(settings),
    )
