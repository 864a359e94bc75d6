"""Create the stcast topics that are missing, and wait until the cluster's metadata shows them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, for_code

_TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """A topic could not be created, or did not appear in the metadata in time."""


async def ensure_topics(
    bootstrap_servers: str,
    partitions: Mapping[str, int],
    timeout_s: float = 30.0,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Create each missing topic with its partition count; an existing topic is left as it is.

    Safe when several processes race to create the same topics.
    """
    deadline = time.monotonic() + timeout_s
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        **(client_options or {}),
    )
    await _start_admin(admin, deadline)
    try:
        missing = set(partitions) - set(await admin.list_topics())
        if missing:
            await _create(admin, {name: partitions[name] for name in sorted(missing)})
        await _wait_visible(admin, set(partitions), deadline)
    finally:
        await admin.close()


def ensure_topics_sync(
    bootstrap_servers: str,
    partitions: Mapping[str, int],
    timeout_s: float = 30.0,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """``ensure_topics`` for synchronous callers (runs its own event loop)."""
    asyncio.run(ensure_topics(bootstrap_servers, partitions, timeout_s, client_options))


async def _start_admin(admin: AIOKafkaAdminClient, deadline: float) -> None:
    while True:
        try:
            await admin.start()
            return
        except KafkaConnectionError as exc:
            if time.monotonic() > deadline:
                raise TopicError(f"no Kafka broker answered: {exc}") from exc
            await asyncio.sleep(0.2)


async def _create(admin: AIOKafkaAdminClient, partitions: Mapping[str, int]) -> None:
    new = [NewTopic(name, n, replication_factor=1) for name, n in partitions.items()]
    response = await admin.create_topics(new)
    for topic_error in response.topic_errors:
        name, code = topic_error[0], topic_error[1]
        # another process may have created it between our listing and our request
        if code and code != _TOPIC_ALREADY_EXISTS:
            raise TopicError(f"could not create topic {name!r}: {for_code(code).__name__}")


async def _wait_visible(admin: AIOKafkaAdminClient, names: set[str], deadline: float) -> None:
    while True:
        described = await admin.describe_topics(sorted(names))
        ready = {t["topic"] for t in described if _is_ready(t)}
        if ready >= names:
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics not visible in the metadata in time: {sorted(names - ready)}")
        await asyncio.sleep(0.1)


def _is_ready(topic: Mapping[str, Any]) -> bool:
    return int(topic["error_code"]) == 0 and bool(topic["partitions"])


__all__ = ["TopicError", "ensure_topics", "ensure_topics_sync"]
