"""One settings object, read once: every ``STCAST_*`` variable is declared and typed here.

Each field's metadata carries its help text; the command line turns fields into flags
(``batch_size`` -> ``--batch-size``) whose defaults come from ``STCAST_BATCH_SIZE`` and then from
the field default. No other module reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_PREFIX = "STCAST_"
NO_MODEL = "none"  # STCAST_MODEL_DIR=none: serve the baseline
# A drift parameter left unset: the served model's calibration (``core.drift.page_hinkley``).
MODELS_OWN = math.nan
# A micro-batch's inference batches, by default. The pipeline drains its inference at the end of
# each micro-batch, so longer micro-batches run faster; but the pipeline runs ahead of the sends,
# and the latency's tail grows with their length (single ticks end to end, docs/performance.md,
# 2026-12-06, last: four 24.6k ticks/s, sixteen 28.0k; then eight and sixteen alike, p99 45-48
# ms and 48-52 ms).
MICRO_BATCH_CHUNKS = 8


def zone_named(name: str, where: str) -> ZoneInfo:
    """The time zone ``name`` (IANA), or ``ValueError`` saying ``where`` it was asked for."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # a folder of zones: IsADirectoryError
        raise ValueError(
            f"{where}={name!r}: not a time zone stcast knows (an IANA name, such as "
            "America/Los_Angeles, Europe/Paris or UTC)"
        ) from None


def _setting(
    default: Any, help: str, choices: tuple[str, ...] | None = None, secret: bool = False
) -> Any:
    # A secret stays out of repr(), and so out of any log line that prints the settings.
    return field(default=default, repr=not secret, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """Configuration of a worker (and of the tools that talk to the same cluster)."""

    bootstrap_servers: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers, host:port,...")
    security_protocol: str = _setting(
        "PLAINTEXT",
        "how clients reach Kafka",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    ssl_cafile: str = _setting("", "CA bundle that signs the brokers' certificates (SSL)")
    ssl_certfile: str = _setting("", "client certificate, PEM, for mutual TLS (SSL)")
    ssl_keyfile: str = _setting("", "client private key, PEM, for mutual TLS (SSL)")
    sasl_mechanism: str = _setting(
        "PLAIN", "SASL mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    )
    sasl_username: str = _setting("", "SASL user name")
    sasl_password: str = _setting("", "SASL password (never logged)", secret=True)
    ticks_topic: str = _setting("stcast.ticks", "topic the sensor ticks arrive on")
    forecasts_topic: str = _setting("stcast.forecasts", "topic forecasts are written to")
    dlq_topic: str = _setting("stcast.dlq", "dead-letter topic for rejected input")
    retrain_topic: str = _setting("stcast.retrain", "topic retrain events are written to")
    models_topic: str = _setting("stcast.models", "topic model updates are announced on")
    partitions: int = _setting(4, "partitions of the stcast topics when stcast creates them")
    compression: str = _setting(
        "none",
        "codec of the record batches stcast writes (forecasts, dead letters, events, replay); "
        "every codec is read whatever this says",
        choices=("none", "gzip", "snappy", "lz4", "zstd"),
    )
    on_unreadable: str = _setting(
        "stop",
        "a fetched record batch that cannot be decoded (corrupt, a codec of a future Kafka): "
        "stop reading its partition there, or skip it to the dead-letter topic with its bytes",
        choices=("stop", "skip"),
    )
    group_id: str = _setting("stcast-worker", "consumer group id of the workers")
    network: str = _setting(
        "", "network served; ticks naming another network are dead-lettered (empty: any)"
    )
    model_dir: str = _setting(
        "",
        "directory with model.onnx and card.json, or a bundled model's name (empty: the "
        "pre-trained universal model; none: the --baseline forecaster)",
    )
    baseline: str = _setting(
        "persistence",
        "forecaster when STCAST_MODEL_DIR=none",
        choices=("persistence", "seasonal-daily", "seasonal-weekly"),
    )
    networks: str = _setting(
        "",
        "a TOML or JSON file declaring several networks (name, step_s, model, graph, keyed); "
        "empty: one network from these flags",
    )
    graph: str = _setting(
        "",
        "the network's graph (edge list from,to[,weight|cost] or N x N matrix, sensors by id or "
        "index): the universal model reads each sensor's neighbours when keyed by network",
    )
    keyed: str = _setting(
        "sensor",
        "how the network's ticks are keyed: by sensor (any worker may hold a sensor; no "
        "neighbours), or by network (a step's tick batch reaches one worker: neighbours)",
        choices=("sensor", "network"),
    )
    forecast_records: str = _setting(
        "each",
        "how a tick batch's forecasts leave: a record each, or one forecast batch record "
        '{"forecasts": [...]} per tick batch, keyed like it (single ticks: a record each)',
        choices=("each", "batch"),
    )
    timezone: str = _setting(
        "",
        "IANA time zone of the network's clock (e.g. America/Los_Angeles): a model's time of "
        "day and weekday follow it, summer time included; empty: the ticks' own clock",
    )
    window: int = _setting(12, "window length in grid steps for a baseline (a model's card wins)")
    horizon: int = _setting(12, "forecast horizon in grid steps for a baseline")
    step_s: int = _setting(0, "grid step in seconds (0: take it from the model card; 300 else)")
    max_gap_steps: int = _setting(3, "longest run of missing steps that is imputed")
    impute: str = _setting("linear", "how short gaps are filled", choices=("linear", "carry"))
    future_tolerance_s: float = _setting(
        86400.0, "ticks stamped further than this ahead of the wall clock are bad_timestamp"
    )
    session_timeout_s: float = _setting(
        10.0, "consumer group session timeout; a dead worker's partitions move after it"
    )
    shutdown_timeout_s: float = _setting(
        30.0, "longest clean shutdown (finish the batch, flush, commit) before giving up"
    )
    sensor_ttl_s: float = _setting(
        21600.0, "a sensor silent this long (event time) is forgotten, bounding memory"
    )
    batch_size: int = _setting(256, "most windows per inference")
    micro_batch: int = _setting(
        0,
        "most messages per micro-batch (0: 8 x batch_size); with several inference batches in "
        "one, each is inferred while the next is placed",
    )
    batch_wait_s: float = _setting(0.01, "longest wait for a micro-batch to fill, seconds")
    provider: str = _setting(
        "auto", "onnxruntime execution provider", choices=("auto", "cuda", "cpu")
    )
    inference_threads: int = _setting(1, "onnxruntime intra-op threads")
    mae_window: int = _setting(2000, "scored errors per horizon in the rolling MAE")
    interval_rate: float = _setting(
        0.05,
        "how fast the served 0.1-0.9 interval's width follows its live coverage toward 0.8 "
        "(log-width change per grid step of the whole network per unit of excess miss rate; "
        "0: serve the model's interval as it is)",
    )
    metrics_host: str = _setting("127.0.0.1", "bind address of the Prometheus endpoint")
    metrics_port: int = _setting(9108, "port of the Prometheus endpoint (0: do not serve)")
    log_level: str = _setting("info", "log level", choices=("debug", "info", "warning", "error"))

    drift_detector: str = _setting(
        "page-hinkley",
        "drift detector on each sensor's standardised forecast errors",
        choices=("page-hinkley", "adwin"),
    )
    drift_threshold: float = _setting(
        MODELS_OWN,
        "Page-Hinkley threshold, in multiples of the sensor's usual error (unset: the served "
        "model's calibration, 18 for universal and the baselines, 25 for a window model)",
    )
    drift_delta: float = _setting(
        MODELS_OWN,
        "Page-Hinkley tolerance: rises below this are ignored (unset: the served model's, 2 "
        "for universal and the baselines, 3 for a window model)",
    )
    drift_adwin_delta: float = _setting(1e-16, "ADWIN significance (smaller: fewer, surer)")
    drift_warmup: int = _setting(
        288, "scored actuals per sensor before its monitor may fire (its usual error is learned)"
    )
    drift_cooldown: int = _setting(36, "scored actuals after a firing before it may fire again")
    drift_feedback_gain: float = _setting(
        0.1,
        "after a sensor's monitor fires, mix its last reading into its forecasts until the next "
        "model swap, at each horizon step by the errors of both there, averaged at this rate a "
        "scored actual (0: off)",
    )
    drift_reanchor: str = _setting(
        "off",
        "on: after a sensor's monitor fires on a sudden step in its level, larger than any "
        "change of the day before, move its history to the new level, so that the model reads "
        "one series (undone if forecasts from the history as it came do better over the next 8 "
        "steps, or if the readings come back); for sensors that get re-installed or "
        "re-calibrated, not for traffic whose congestion comes and goes",
        choices=("on", "off"),
    )
    reading_checks: str = _setting(
        "stuck,range,noise",
        "checks on each sensor's readings, comma-separated (empty: none): stuck (the same value "
        "repeated), range (far outside its range), noise (its noise level rose)",
    )
    canary_s: float = _setting(
        21600.0,
        "event time a new model and the one it replaces are compared on the same targets, one "
        "of them forecasting in the shadow (see canary_mode; 0: no canary, a new model serves "
        "at once)",
    )
    canary_mode: str = _setting(
        "both",
        "before: a new model forecasts in the shadow for canary_s first (a trial) and serves "
        "only if it did no worse than the serving one; after: it serves at once and the one it "
        "replaced forecasts in the shadow, rolled back to if the new one did worse; both: a "
        "trial, then after the swap the replaced one in the shadow for canary_s again",
        choices=("after", "before", "both"),
    )
    canary_margin: float = _setting(
        0.0,
        "a new model goes (rejected on trial, or rolled back) when its MAE at the last horizon "
        "step, or at the step nearest an hour ahead, is more than this share above the other "
        "model's on the canary's targets",
    )
    canary_min_pairs: int = _setting(
        100, "fewest scored targets at the last horizon step before a canary decides"
    )
    retrain_cooldown_s: float = _setting(
        21600.0, "at most one retrain event per network in this much event time"
    )
    retrain_min_sensors: int = _setting(3, "fewest drifting sensors for a retrain event")
    retrain_min_share: float = _setting(
        0.02, "fewest drifting sensors for a retrain event, as a share of those monitored"
    )
    quarantine_strikes: int = _setting(
        3, "consecutive retrain events that name a sensor before it is quarantined"
    )
    quarantine_s: float = _setting(
        86400.0, "event time without a detection after which a quarantined sensor returns"
    )

    model_registry: str = _setting(
        "", "model registry directory: REGISTRY/NAME/VERSION/{model.onnx,card.json} + CURRENT"
    )
    retrain_group_id: str = _setting("stcast-retrain", "consumer group id of retrain workers")
    retrain_history_s: float = _setting(
        259200.0,
        "event time of recent readings a retrain fine-tunes and validates on (at least 864 of "
        "the network's steps)",
    )
    retrain_holdout_steps: int = _setting(
        36,
        "newest grid steps held back to compare the fine-tuned model with the serving one (0: "
        "none; the challenger is fitted on every step and judged by the trial alone, which "
        "needs STCAST_CANARY_MODE=before and STCAST_CANARY_S above 0)",
    )
    retrain_max_s: float = _setting(120.0, "wall-clock budget of one fine-tuning, seconds")
    retrain_min_gain: float = _setting(
        0.02, "share by which the challenger's holdout MAE must beat the serving model's"
    )
    retrain_threads: int = _setting(1, "torch threads of a fine-tuning")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``STCAST_*`` variables, then explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validated()

    def validated(self) -> Settings:
        """Return self, or raise ``ValueError`` naming the setting that is out of range."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{env_name(f.name)}={value!r}: expected one of {choices}")
        positive = (
            "partitions",
            "window",
            "horizon",
            "batch_size",
            "mae_window",
            "inference_threads",
            "drift_warmup",
            "retrain_min_sensors",
            "canary_min_pairs",
            "quarantine_strikes",
            "retrain_threads",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{env_name(name)} must be at least 1")
        non_negative = (
            "micro_batch",
            "max_gap_steps",
            "step_s",
            "batch_wait_s",
            "future_tolerance_s",
            "session_timeout_s",
            "shutdown_timeout_s",
            "sensor_ttl_s",
            "drift_threshold",
            "drift_delta",
            "drift_adwin_delta",
            "drift_cooldown",
            "retrain_cooldown_s",
            "retrain_min_share",
            "quarantine_s",
            "retrain_history_s",
            "retrain_max_s",
            "retrain_min_gain",
            "drift_feedback_gain",
            "canary_s",
            "canary_margin",
            "interval_rate",
        )
        may_be_unset = ("drift_threshold", "drift_delta")  # NaN: the served model's own
        for name in non_negative:
            value = getattr(self, name)
            if name in may_be_unset and math.isnan(value):
                continue
            if not 0 <= value < float("inf"):  # also refuses NaN
                raise ValueError(f"{env_name(name)}={value!r} must be a finite number >= 0")
        if self.retrain_holdout_steps < 0:
            raise ValueError(f"{env_name('retrain_holdout_steps')} must be 0 or more")
        if self.retrain_holdout_steps == 0 and not self.trial_first:
            raise ValueError(
                f"{env_name('retrain_holdout_steps')}=0 leaves a challenger to its trial alone: "
                f"it needs {env_name('canary_mode')}=before (or both) and {env_name('canary_s')} "
                "above 0"
            )
        if self.timezone:
            zone_named(self.timezone, env_name("timezone"))
        if not 0 <= self.drift_feedback_gain < 1:
            raise ValueError(f"{env_name('drift_feedback_gain')} must be in [0, 1)")
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ValueError(
                f"{env_name('security_protocol')}={self.security_protocol} needs "
                f"{env_name('sasl_username')} and {env_name('sasl_password')}"
            )
        return self

    @property
    def micro_batch_messages(self) -> int:
        """Most messages per micro-batch: ``micro_batch``, else ``MICRO_BATCH_CHUNKS``
        inference batches."""
        return self.micro_batch if self.micro_batch > 0 else MICRO_BATCH_CHUNKS * self.batch_size

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes).validated()

    @property
    def stcast_topics(self) -> tuple[str, ...]:
        """Every topic of the loop: ticks, forecasts, dead letters, retrain events, models."""
        return (
            self.ticks_topic,
            self.forecasts_topic,
            self.dlq_topic,
            self.retrain_topic,
            self.models_topic,
        )

    @property
    def trial_first(self) -> bool:
        """Whether a new version forecasts in the shadow before it serves (a trial)."""
        return self.canary_mode in ("before", "both") and self.canary_s > 0

    @property
    def model_path(self) -> Path | None:
        """A model directory given explicitly (not the default, not a baseline)."""
        return Path(self.model_dir) if self.model_dir not in ("", NO_MODEL) else None


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def setting_fields() -> Iterator[dataclasses.Field[Any]]:
    """The declared settings, for the command line to turn into flags."""
    yield from fields(Settings)


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind: type[Any] = type(f.default)
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {kind.__name__}") from exc
