"""faust's own consume-only ceiling: the worker's faust app with an agent that only counts.

Run by ``stcast bench`` as ``python -m stream_app.faust_ceiling N OUT`` with the worker's
``STCAST_*`` settings in the environment; once N messages have been read it writes
``{"ticks_per_s": ...}`` to the file OUT (faust takes over stdout), timed from the first
micro-batch to the N-th message, and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .agents import faust_app
from .settings import Settings


def main(expected: int, out: Path) -> None:
    import faust

    settings = Settings.from_env()
    asyncio.set_event_loop(asyncio.new_event_loop())
    app, ticks = faust_app(settings)
    seen = {"n": 0, "first": 0.0}

    @app.agent(ticks, name="stcast.faust-ceiling")
    async def count(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, settings.batch_wait_s):
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
