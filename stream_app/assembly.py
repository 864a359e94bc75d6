"""From the settings to a serving core: the forecaster, and the pipeline with its drift monitors.

The one place where the settings meet the core, shared by the worker (``kafka.worker``) and the
in-process online evaluation (``loop.online_eval``).
"""

from __future__ import annotations

from .bundled import model_path
from .core.contexts import NeighbourTable
from .core.drift import DriftSink, describe, forecaster_scale, make_detector, page_hinkley
from .core.feedback import ErrorFeedback
from .core.forecasters import DAY_S, WEEK_S, Forecaster, Persistence, SeasonalNaive
from .core.metrics import Metrics
from .core.pipeline import Pipeline
from .core.readings import ReadingMonitors, ReadingSink
from .core.retrain_events import RetrainPolicy
from .core.windows import Impute
from .networks import Core, NetworkRouter, declared_networks
from .settings import NO_MODEL, Settings, env_name, zone_named

DEFAULT_STEP_S = 300


def load_forecaster(settings: Settings) -> Forecaster:
    """The model ``settings.model_dir`` names (the bundled ``universal`` when it names none),
    or, for ``none``, the configured baseline.

    A model whose card contradicts the settings raises ``ModelContractError`` here, at start-up.
    """
    if settings.model_dir != NO_MODEL:
        from .core.card import UNIVERSAL, ModelCard
        from .core.onnx_forecaster import OnnxForecaster

        path = model_path(settings.model_dir or UNIVERSAL)
        any_step = ModelCard.load(path).kind == UNIVERSAL
        return OnnxForecaster(
            path,
            provider=settings.provider,
            threads=settings.inference_threads,
            step_s=settings.step_s or (DEFAULT_STEP_S if any_step else 0),
        )
    step_s = settings.step_s or DEFAULT_STEP_S
    if settings.baseline == "seasonal-daily":
        return SeasonalNaive.for_period(DAY_S, step_s, settings.horizon)
    if settings.baseline == "seasonal-weekly":
        return SeasonalNaive.for_period(WEEK_S, step_s, settings.horizon)
    return Persistence(horizon=settings.horizon, window=settings.window)


def grid_step(settings: Settings, forecaster: Forecaster) -> int:
    """The grid step: the setting, else the model's (its card's, or the step it was given)."""
    given: int = getattr(forecaster, "grid_step", 0)
    if given:
        return settings.step_s or given
    card = getattr(forecaster, "card", None)
    return settings.step_s or (card.step_s if card is not None else DEFAULT_STEP_S)


def neighbour_table(settings: Settings, forecaster: Forecaster) -> NeighbourTable | None:
    """The network's neighbours for a universal model, when its whole step reaches one worker
    (keyed by network) and its graph is given; else None: the neighbour input is masked."""
    card = getattr(forecaster, "card", None)
    if not settings.graph or settings.keyed != "network" or card is None or not card.neighbours:
        return None
    from .offline.graphs import neighbour_table as read_table

    k = int(card.neighbours.get("k", 8))
    return NeighbourTable(read_table(settings.graph, settings.network or "default", k), k)


def build_core(settings: Settings, metrics: Metrics) -> Core:
    """The pipeline of the one network the settings describe, or, for a networks file, a
    router over each declared network's pipeline (its own grid, model, graph and monitors)."""
    specs = declared_networks(settings)
    if not settings.networks:
        return build_pipeline(settings, load_forecaster(settings), metrics)
    pipelines = {}
    for spec in specs:
        own = spec.settings(settings)
        pipelines[spec.name] = build_pipeline(own, load_forecaster(own), metrics)
    return NetworkRouter(pipelines, specs[0].name, metrics)


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
        neighbours=neighbour_table(settings, forecaster),
        canary_s=settings.canary_s,
        canary_margin=settings.canary_margin,
        canary_min_pairs=settings.canary_min_pairs,
        canary_mode=settings.canary_mode,
        forecast_batch=settings.forecast_records == "batch",
        interval_rate=settings.interval_rate,
        zone=zone_named(settings.timezone, env_name("timezone")) if settings.timezone else None,
    )
    sink = drift_sink(settings, pipeline, metrics)
    pipeline.watch(sink)
    checks = [c.strip() for c in settings.reading_checks.split(",") if c.strip()]
    if checks:
        monitors = ReadingMonitors(pipeline.step_s, warmup=settings.drift_warmup, checks=checks)
        pipeline.watch_readings(
            ReadingSink(
                monitors,
                sensor_of=pipeline.sensor_at,
                now=lambda: pipeline.newest_ts_s,
                policy=sink.policy,
                metrics=metrics,
            )
        )
    if settings.drift_feedback_gain > 0:
        pipeline.correct_with(ErrorFeedback(forecaster.horizon, settings.drift_feedback_gain))
    pipeline.reanchor = settings.drift_reanchor == "on"
    sink.on_detection = pipeline.drifted
    return pipeline


def drift_sink(settings: Settings, pipeline: Pipeline, metrics: Metrics) -> DriftSink:
    """Per-sensor drift monitors, and the policy that turns their detections into events."""
    if settings.drift_detector == "page-hinkley":
        params = page_hinkley(pipeline.forecaster, settings.drift_threshold, settings.drift_delta)
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
