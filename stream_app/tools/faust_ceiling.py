"""faust's own consume-only ceiling: a faust app whose agent only counts the ticks it reads.

The reference the worker's single-tick throughput is compared with (``stcast bench`` row b):
the same topic, group settings, micro-batch size and wait as the worker, faust's fastest
iteration (``take_events`` over raw bytes), and no work per event.

Run by ``stcast bench`` as ``python -m stream_app.tools.faust_ceiling N OUT`` with the worker's
``STCAST_*`` settings in the environment; once N messages have been read it writes
``{"ticks_per_s": ...}`` to the file OUT (faust takes over stdout), timed from the first
micro-batch to the N-th message, and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faust

from ..settings import Settings


def faust_app(settings: Settings) -> tuple[faust.App, Any]:
    """A faust app and its raw-bytes ticks topic, configured like the worker's consumer."""
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        web_enabled=False,
        datadir=tempfile.mkdtemp(prefix="stcast-faust-"),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # The group join waits on the session timeout on Tansu: 60 s (faust's default) means a
        # worker idles for half a minute before its first tick.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 10,
    )
    ticks = app.topic(
        settings.ticks_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    return app, ticks


def main(expected: int, out: Path) -> None:
    settings = Settings.from_env()
    asyncio.set_event_loop(asyncio.new_event_loop())
    app, ticks = faust_app(settings)
    seen = {"n": 0, "first": 0.0}

    @app.agent(ticks, name="stcast.faust-ceiling")
    async def count(stream: Any) -> None:
        async for events in stream.take_events(
            settings.micro_batch_messages, settings.batch_wait_s
        ):
            if not seen["n"]:
                seen["first"] = time.perf_counter()
            seen["n"] += len(events)
            if seen["n"] >= expected:
                seconds = time.perf_counter() - seen["first"]
                out.write_text(json.dumps({"ticks_per_s": expected / seconds, "seconds": seconds}))
                os._exit(0)  # the figure is out; faust's orderly shutdown would only add time

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
