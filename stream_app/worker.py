"""Assembling and running a worker from settings: forecaster, pipeline, metrics, serving."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from prometheus_client import CollectorRegistry, start_http_server

from .drift import DriftSink, describe, forecaster_scale, make_detector
from .feedback import ErrorFeedback
from .forecasters import DAY_S, WEEK_S, Forecaster, Persistence, SeasonalNaive
from .kafka_client import client_options
from .metrics import Metrics
from .pipeline import Pipeline
from .retrain_events import RetrainPolicy
from .serving import serve
from .settings import Settings
from .topics import ensure_topics_sync
from .windows import Impute

log = logging.getLogger(__name__)

DEFAULT_STEP_S = 300


def load_forecaster(settings: Settings) -> Forecaster:
    """The model in ``settings.model_dir``, or the configured baseline when there is none.

    A model whose card contradicts the settings raises ``ModelContractError`` here, at start-up.
    """
    if settings.model_path is not None:
        from .onnx_forecaster import OnnxForecaster

        return OnnxForecaster(
            settings.model_path,
            provider=settings.provider,
            threads=settings.inference_threads,
            step_s=settings.step_s,
        )
    step_s = settings.step_s or DEFAULT_STEP_S
    if settings.baseline == "seasonal-daily":
        return SeasonalNaive.for_period(DAY_S, step_s, settings.horizon)
    if settings.baseline == "seasonal-weekly":
        return SeasonalNaive.for_period(WEEK_S, step_s, settings.horizon)
    return Persistence(horizon=settings.horizon, window=settings.window)


def grid_step(settings: Settings, forecaster: Forecaster) -> int:
    """The grid step: the setting, else the model card's, else the default."""
    card = getattr(forecaster, "card", None)
    return settings.step_s or (card.step_s if card is not None else DEFAULT_STEP_S)


def build_pipeline(settings: Settings, forecaster: Forecaster, metrics: Metrics) -> Pipeline:
    """The core, with a drift monitor per sensor that raises retrain events."""
    pipeline = Pipeline(
        forecaster,
        step_s=grid_step(settings, forecaster),
        max_gap_steps=settings.max_gap_steps,
        impute=Impute(settings.impute),
        network=settings.network,
        future_tolerance_s=settings.future_tolerance_s,
        batch_size=settings.batch_size,
        mae_window=settings.mae_window,
        sensor_ttl_s=settings.sensor_ttl_s,
        metrics=metrics,
    )
    sink = drift_sink(settings, pipeline, metrics)
    pipeline.watch(sink)
    if settings.drift_feedback_gain > 0:
        feedback = ErrorFeedback(forecaster.horizon, settings.drift_feedback_gain)
        pipeline.correct_with(feedback)
        sink.on_detection = feedback.activate
    return pipeline


def drift_sink(settings: Settings, pipeline: Pipeline, metrics: Metrics) -> DriftSink:
    """Per-sensor drift monitors, and the policy that turns their detections into events."""
    if settings.drift_detector == "page-hinkley":
        params = {"threshold": settings.drift_threshold, "delta": settings.drift_delta}
    else:
        params = {"delta": settings.drift_adwin_delta}
    detector = make_detector(settings.drift_detector, **params)
    sink: DriftSink
    policy = RetrainPolicy(
        settings.network or "default",
        emit=pipeline.retrain,
        model=lambda: pipeline.forecaster.model_id,
        monitored=lambda: sink.monitored,
        detector={**describe(detector), "warmup": settings.drift_warmup},
        cooldown_s=settings.retrain_cooldown_s,
        min_sensors=settings.retrain_min_sensors,
        min_share=settings.retrain_min_share,
        strikes=settings.quarantine_strikes,
        quarantine_s=settings.quarantine_s,
        metrics=metrics,
    )
    sink = DriftSink(
        detector,
        sensor_of=pipeline.sensor_at,
        now=lambda: pipeline.newest_ts_s,
        policy=policy,
        horizon=pipeline.forecaster.horizon,
        warmup=settings.drift_warmup,
        cooldown=settings.drift_cooldown,
        scale=forecaster_scale(pipeline.forecaster),
        metrics=metrics,
    )
    return sink


def run_worker(settings: Settings) -> int:
    """Run a worker until SIGTERM or Ctrl-C; return the exit status."""
    forecaster = load_forecaster(settings)
    metrics = Metrics(CollectorRegistry())
    pipeline = build_pipeline(settings, forecaster, metrics)
    ensure_topics_sync(
        settings.bootstrap_servers,
        dict.fromkeys(settings.stcast_topics, settings.partitions),
        client_options=client_options(settings),
    )
    if settings.metrics_port:
        start_http_server(settings.metrics_port, settings.metrics_host, metrics.registry)
    log.info(
        "serving %s on %s, grid step %d s, metrics on %s:%d",
        forecaster.model_id,
        forecaster.provider,
        pipeline.step_s,
        settings.metrics_host,
        settings.metrics_port,
    )
    asyncio.run(_serve_until_signalled(settings, pipeline, metrics))
    log.info("stopped cleanly")
    return 0


async def _serve_until_signalled(settings: Settings, pipeline: Pipeline, metrics: Metrics) -> None:
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
