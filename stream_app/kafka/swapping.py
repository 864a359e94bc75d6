"""Model updates from ``stcast.models``, swapped in between micro-batches without stopping.

Every worker reads every update (no consumer group), from the topic's start, so a worker that
starts late still ends up on the newest model of each network it serves (of a burst read at
once, the newest per model lineage is applied: ``newest_per_lineage``). An update names a
model directory (``uri``) and the sha256 of its ONNX file. The new session is opened, checked
and warmed in a thread, off the hot path; the pipeline then switches between two
micro-batches. Anything wrong with the new model leaves the old one serving, with the reason in
the log and in ``model_swap_failures_total{reason}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.card import ModelContractError
from ..core.forecasters import WindowBatch
from ..core.metrics import Metrics
from ..core.onnx_forecaster import OnnxForecaster
from ..settings import Settings
from .clients import topic_reader

log = logging.getLogger(__name__)


class ModelUpdateError(ValueError):
    """An update this worker will not serve; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ModelUpdate:
    """The record on ``stcast.models`` (DESIGN.md): which model, where, and its hash."""

    model: str
    uri: str
    sha256: str
    rolls_back: str = ""  # a canary's rollback: the model it replaces
    canary: bool = True  # no canary for a rollback, nor for an operator's ``stcast models use``

    @classmethod
    def decode(cls, raw: bytes) -> ModelUpdate:
        try:
            obj: Any = json.loads(raw)
            validation = obj.get("validation")
            validation = validation if isinstance(validation, dict) else {}
            rollback = validation.get("rollback")
            rolls_back = str(rollback.get("served", "")) if isinstance(rollback, dict) else ""
            canary = not rolls_back and validation.get("canary") is not False
            return cls(str(obj["model"]), str(obj["uri"]), str(obj["sha256"]), rolls_back, canary)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelUpdateError("malformed", f"unreadable model update ({exc})") from exc

    def encode(self, **extra: Any) -> bytes:
        return json.dumps({"model": self.model, "uri": self.uri, "sha256": self.sha256, **extra})\
            .encode()  # fmt: skip


def open_update(update: ModelUpdate, settings: Settings) -> OnnxForecaster:
    """The update's model, checked against the update and its card, and warmed."""
    directory = Path(update.uri.removeprefix("file://"))
    try:
        forecaster = OnnxForecaster(
            directory,
            provider=settings.provider,
            threads=settings.inference_threads,
            step_s=settings.step_s,
        )
    except ModelContractError as exc:
        raise ModelUpdateError("contract", str(exc)) from exc
    if forecaster.card.onnx_sha256 != update.sha256:
        raise ModelUpdateError(
            "sha256",
            f"{update.model}: the update says sha256 {update.sha256} but {directory} holds "
            f"{forecaster.card.onnx_sha256}",
        )
    if forecaster.model_id != update.model:
        raise ModelUpdateError(
            "identity", f"the update names {update.model} but the card says {forecaster.model_id}"
        )
    warm = WindowBatch(np.zeros((1, forecaster.window)), np.zeros(1, np.int64), ("warm-up",))
    if not np.all(np.isfinite(forecaster.forecast(warm))):
        raise ModelUpdateError("non_finite", f"{update.model} forecast a non-finite value")
    return forecaster


async def follow_models(
    settings: Settings,
    metrics: Metrics,
    swap: Callable[[OnnxForecaster, ModelUpdate], Awaitable[None]],
    stop: asyncio.Event,
) -> None:
    """Swap in each model announced on ``settings.models_topic`` until ``stop`` is set."""
    consumer = topic_reader(settings, settings.models_topic)
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            records = [r for batch in batches.values() for r in batch]
            now_ms = time.time() * 1000
            for index in newest_per_lineage([r.value for r in records]):
                stamp = records[index].timestamp  # -1: none (a pre-0.10 record): judge it
                age_s = max(0.0, (now_ms - stamp) / 1000) if stamp >= 0 else 0.0
                await _apply(records[index].value, settings, metrics, swap, age_s)
    finally:
        await consumer.stop()


def newest_per_lineage(raws: Sequence[bytes]) -> list[int]:
    """The positions of the updates of a burst worth applying, in order: the newest of each
    lineage (a model's name, or for a rollback the name of the model it rolls back), so that a
    worker reading the topic from its start, or serving several networks, skips what was
    superseded without losing another network's update. Unreadable ones stay, to be refused
    and counted.

    >>> def update(model: str, rolls_back: str = "") -> bytes:
    ...     rollback = {"rollback": {"served": rolls_back}} if rolls_back else {}
    ...     return ModelUpdate(model, "file:///m", "0").encode(validation=rollback)
    >>> burst = [update("a-universal@2"), update("b-universal@2"), update("a-universal@3"),
    ...          update("universal@1", rolls_back="b-universal@2"), b"{"]
    >>> newest_per_lineage(burst)
    [2, 3, 4]
    """
    newest: dict[object, int] = {}
    for index, raw in enumerate(raws):
        try:
            update = ModelUpdate.decode(raw)
        except ModelUpdateError:
            newest[index] = index
            continue
        newest[(update.rolls_back or update.model).partition("@")[0]] = index
    return sorted(newest.values())


async def _apply(
    raw: bytes,
    settings: Settings,
    metrics: Metrics,
    swap: Callable[[OnnxForecaster, ModelUpdate], Awaitable[None]],
    age_s: float = 0.0,
) -> None:
    """Open and swap in one update, ``age_s`` after it was announced. One announced longer ago
    than a canary lasts (``STCAST_CANARY_S``) is past its trial or canary on the workers that
    were running (a rejection would have been announced after it): a worker that starts now
    serves it at once rather than judging it again against the model it started with."""
    try:
        update = ModelUpdate.decode(raw)
        if update.canary and age_s > settings.canary_s:
            update = replace(update, canary=False)
            log.info("%s was announced %.0f s ago, past its canary: served at once",
                     update.model, age_s)  # fmt: skip
        forecaster = await asyncio.to_thread(open_update, update, settings)
        await swap(forecaster, update)
    except ModelUpdateError as exc:
        _refuse(metrics, exc.reason, str(exc))
    except ValueError as exc:  # the pipeline refuses a different window
        _refuse(metrics, "shape", str(exc))
    else:
        rollback = f" (a rollback from {update.rolls_back})" if update.rolls_back else ""
        log.info("now serving %s on %s%s", forecaster.model_id, forecaster.provider, rollback)


def _refuse(metrics: Metrics, reason: str, detail: str) -> None:
    log.error("model update refused, the current model keeps serving: %s", detail)
    metrics.model_swap_failures.labels(reason=reason).inc()
