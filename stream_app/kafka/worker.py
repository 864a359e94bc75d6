"""Running a worker: the core ``assembly`` builds, metrics over HTTP, serving until a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from prometheus_client import CollectorRegistry, start_http_server

from ..assembly import build_core
from ..core.metrics import Metrics
from ..networks import Core, NetworkRouter
from ..settings import Settings
from .clients import client_options
from .serving import serve
from .topics import ensure_topics_sync

log = logging.getLogger(__name__)
# A chunk's inference (onnxruntime, without the GIL) overlaps the placing of the next chunk's
# ticks (Python). When it ends, its thread waits for the GIL to hand the forecasts back: with
# Python's default 5 ms switch interval that wait is longer than a 256-window inference, and
# the two serialise again (single ticks in process: 40,919 ticks/s at 5 ms, 48,974 at 0.5 ms).
GIL_SWITCH_INTERVAL_S = 0.0005


def run_worker(settings: Settings) -> int:
    """Run a worker until SIGTERM or Ctrl-C; return the exit status."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    metrics = Metrics(CollectorRegistry(), per_network=bool(settings.networks))
    core = build_core(settings, metrics)
    ensure_topics_sync(
        settings.bootstrap_servers,
        dict.fromkeys(settings.stcast_topics, settings.partitions),
        client_options=client_options(settings),
    )
    if settings.metrics_port:
        start_http_server(settings.metrics_port, settings.metrics_host, metrics.registry)
    log.info("metrics on %s:%d", settings.metrics_host, settings.metrics_port)
    pipelines = core.pipelines if isinstance(core, NetworkRouter) else {settings.network: core}
    for network, pipeline in pipelines.items():
        forecaster = pipeline.forecaster
        neighbours = pipeline.neighbours
        log.info(
            "network %s: serving %s on %s, grid step %d s, %s",
            network or "(any)",
            forecaster.model_id,
            forecaster.provider,
            pipeline.step_s,
            f"neighbours of {len(neighbours)} sensors" if neighbours else "no neighbours",
        )
    freeze_what_was_built()
    asyncio.run(_serve_until_signalled(settings, core, metrics))
    log.info("stopped cleanly")
    return 0


def freeze_what_was_built() -> None:
    """Move every object made so far (the modules, the models, the networks' state) out of the
    cyclic garbage collector's sight: they live as long as the worker. A full collection
    traversed them all with every thread stopped: six in a run of the benchmark's single ticks
    took 251 ms, up to 52 ms each, the size of their p99 latency; with them frozen, 4-8 ms each
    (docs/performance.md)."""
    gc.collect()
    gc.freeze()


async def _serve_until_signalled(settings: Settings, pipeline: Core, metrics: Metrics) -> None:
    """Serve; on SIGTERM or SIGINT stop within ``shutdown_timeout_s``, cleanly or not at all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def begin_shutdown(sig: signal.Signals) -> None:
        log.info("%s: finishing the batch in hand, flushing, committing", sig.name)
        stop.set()
        loop.call_later(settings.shutdown_timeout_s, _give_up, settings.shutdown_timeout_s)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, begin_shutdown, sig)
    await serve(settings, pipeline, metrics, stop)


def _give_up(timeout_s: float) -> None:
    # Nothing unacknowledged was committed, so whatever is cut short here is read again.
    log.error("clean shutdown took longer than %.0f s: exiting without it", timeout_s)
    logging.shutdown()
    os._exit(1)
