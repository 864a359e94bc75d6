"""``stcast retrain-worker``: retrain events in, fine-tuned, validated, published models out.

For each event on ``stcast.retrain`` (one consumer group; the offset is committed only after
the event was handled, so a crash handles it again):

1. The event must name the registry's serving version of its model; an event about an older
   version is stale (a retrain already answered that drift) and is skipped, and so is one a
   newer event for the same network and model follows in the same read (``superseded``: a
   backlog is answered once, on the newest readings).
2. The recent readings of the model's sensors come from the worker's own :class:`History`,
   filled by reading ``stcast.ticks`` from the start of its retention (no offset-for-time
   lookups), without the sensors the event names as quarantined (a stuck sensor's readings
   would teach the model to repeat them). The newest ``retrain_holdout_steps`` steps are held
   back.
3. ``models.finetuning.fine_tune`` warm-starts from the serving version's checkpoint on the
   steps before the holdout, within ``retrain_max_s``, in a thread (the tail keeps reading).
4. :func:`stream_app.loop.challenger.compare` forecasts the holdout with both models through the
   worker's ONNX code. Only a challenger whose MAE is ``retrain_min_gain`` below the serving
   model's is published: as the next version in the registry, made current, and announced on
   ``stcast.models`` with the comparison as its ``validation``.

This module imports torch only when a retrain starts; the retrain image has it, the edge image
does not run this verb.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError

from ..assembly import DEFAULT_STEP_S
from ..core.card import UNIVERSAL
from ..core.contexts import local_seconds
from ..core.onnx_forecaster import OnnxForecaster
from ..core.records import format_ts
from ..core.retrain_events import ROLLBACK, RetrainEvent
from ..kafka.clients import client_options, producer_options, topic_reader
from ..kafka.topics import ensure_topics_sync
from ..kafka.unreadable import TolerantReader
from ..networks import declared_networks
from ..offline.datasets import GridDataset
from ..settings import Settings, zone_named
from .history import History, without
from .registry import Registry, RegistryError, Version, parse_model_id

log = logging.getLogger(__name__)

MIN_HISTORY_STEPS = 864  # what the default span gives at 5 minutes: three days
CATCH_UP_S = 30.0  # longest wait for the history to reach an event's detection time


@dataclass(frozen=True)
class Outcome:
    """What became of one retrain event: ``published``, ``rejected``, ``skipped``, or, for a
    canary's rollback event, ``rolled back`` (``published``: the version made current)."""

    event: str
    result: str
    detail: str
    published: str | None = None
    validation: dict[str, Any] | None = None


def run_retrain_worker(settings: Settings) -> int:
    """Run until SIGTERM or Ctrl-C; return the exit status."""
    if not settings.model_registry:
        raise ValueError("the retrain worker publishes to a registry: set STCAST_MODEL_REGISTRY")
    try:
        import models.finetuning  # noqa: F401  (fail now, not at the first event)
    except ImportError as exc:
        raise RuntimeError(f"retraining needs torch ({exc}): pip install 'stcast[train]'") from None
    topics = (settings.ticks_topic, settings.retrain_topic, settings.models_topic)
    ensure_topics_sync(
        settings.bootstrap_servers,
        dict.fromkeys(topics, settings.partitions),
        client_options=client_options(settings),
    )
    asyncio.run(_serve_until_signalled(settings))
    log.info("stopped cleanly")
    return 0


async def _serve_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await RetrainWorker(settings).serve(stop)


class RetrainWorker:
    """The history tail and the event loop of one retrain worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(Path(settings.model_registry))
        specs = declared_networks(settings)  # the default network first
        fallback = settings.step_s or DEFAULT_STEP_S
        self.steps = {spec.name: spec.step_s or fallback for spec in specs}
        self.zones = {spec.name: spec.timezone or settings.timezone for spec in specs}
        self.history = History(
            history_span_s(settings, self.steps[specs[0].name]),
            {name: history_span_s(settings, step) for name, step in self.steps.items()},
        )
        self.outcomes: list[Outcome] = []

    async def serve(self, stop: asyncio.Event) -> None:
        """Tail the ticks and handle retrain events until ``stop`` is set."""
        tail = asyncio.create_task(self._tail(stop))
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            **producer_options(self.settings),
        )
        events = AIOKafkaConsumer(
            self.settings.retrain_topic,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.settings.retrain_group_id,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            **client_options(self.settings),
        )
        await producer.start()
        await events.start()
        log.info("retrain worker: registry %s, waiting for retrain events", self.registry.root)
        try:
            while not stop.is_set() and not tail.done():
                batches = await events.getmany(timeout_ms=500)
                for records in batches.values():
                    newer = superseded([record.value for record in records])
                    for record, (event_id, newest) in zip(records, newer, strict=True):
                        if newest is None:
                            outcome = await self.handle(record.value, producer)
                        else:
                            outcome = Outcome(
                                event_id, "skipped",
                                f"superseded by {newest}, a newer event for the network",
                            )  # fmt: skip
                        self.outcomes.append(outcome)
                        await _commit(events)
                        log.info("retrain event %s: %s (%s)", *_summary(outcome))
        finally:
            stop.set()
            await events.stop()
            await producer.stop()
            await asyncio.wait({tail}, timeout=5.0)
        if tail.done() and not tail.cancelled() and tail.exception() is not None:
            raise RuntimeError("the ticks tail failed") from tail.exception()

    async def _tail(self, stop: asyncio.Event) -> None:
        consumer = topic_reader(self.settings, self.settings.ticks_topic)
        reader = TolerantReader(consumer, self.settings)
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await reader.getmany_past_unreadable(timeout_ms=500, max_records=20_000)
                for messages in batches.values():
                    for message in messages:
                        self.history.add_message(message)
                await asyncio.sleep(0)
        finally:
            await consumer.stop()

    async def handle(self, raw: bytes, producer: AIOKafkaProducer) -> Outcome:
        """One event, start to end; never raises for a bad event or a failed retrain."""
        try:
            event = RetrainEvent.decode(raw)
        except ValueError as exc:
            return Outcome("?", "skipped", f"unreadable retrain event: {exc}")
        if event.reason == ROLLBACK:
            return await self.roll_back(event, producer)
        try:
            serving, answered = self._serving(event)
        except RegistryError as exc:
            return Outcome(event.id, "skipped", str(exc))
        if serving is None:
            return Outcome(event.id, "skipped", answered)
        await self._catch_up(event)
        try:
            # cut on the event loop: the tail goes on adding readings while the thread trains;
            # quarantined sensors (stuck, or drifting through retrains) are not learned from
            quarantined = event.evidence.get("quarantined") or []
            recent = without(self._recent(event, serving), set(quarantined))
            outcome = await asyncio.to_thread(self._retrain, event, serving, recent)
        except (ValueError, RuntimeError, OSError) as exc:  # too little data, a failed export
            log.exception("retrain for %s failed", event.id)
            return Outcome(event.id, "rejected", f"retrain failed: {exc}")
        if outcome.published is not None and outcome.validation is not None:
            name, version = parse_model_id(outcome.published)
            await announce(producer, self.settings, self.registry.get(name, version),
                           outcome.validation)  # fmt: skip
        return outcome

    async def roll_back(self, event: RetrainEvent, producer: AIOKafkaProducer) -> Outcome:
        """A worker's canary found ``event.model`` worse than the version it replaced (or, on a
        trial, than the version still serving): make that one current again (``stcast models
        use``) and announce it, once. The workers that sent the same verdict later find the
        model no longer current and are skipped."""
        verdict = event.evidence
        try:
            name, _ = parse_model_id(event.model)
            current = self.registry.current(name)
            if current is None or current.model_id != event.model:
                return Outcome(event.id, "skipped", f"{event.model} is no longer current")
            previous_name, previous_version = parse_model_id(str(verdict.get("previous", "")))
            previous = self.registry.get(previous_name, previous_version)
        except RegistryError as exc:
            return Outcome(event.id, "skipped", f"cannot roll back: {exc}")
        if previous.name == name:
            self.registry.set_current(name, previous.version)
        else:  # a network's first fine-tuning of a shared model: back to the shared one
            self.registry.retire(name)
        what = "trial" if verdict.get("trial") else "canary"
        detail = (
            f"{what}: {event.model} MAE {verdict.get('served_mae')} vs {previous.model_id} "
            f"{verdict.get('previous_mae')} over {verdict.get('pairs')} targets"
        )
        await announce(producer, self.settings, previous, {"rollback": verdict})
        log.warning("rolled back %s to %s: %s", event.model, previous.model_id, detail)
        return Outcome(event.id, "rolled back", detail, previous.model_id, {"rollback": verdict})

    def _serving(self, event: RetrainEvent) -> tuple[Version | None, str]:
        """The version the event is about, if it is still the one to fine-tune; else None and
        why: a retrain already answered it with a newer version of its lineage, or, for the
        shared universal model, with a version of the network's own (serving, or on trial:
        drift events raised before its announcement reached the workers make one retrain,
        not one each)."""
        name, _ = parse_model_id(event.model)
        current = self.registry.current(name)
        if current is None:
            raise RegistryError(f"{name} has no current version in {self.registry.root}")
        if current.model_id != event.model:
            return None, f"{event.model} no longer serves: a retrain answered it"
        own = self.registry.current(network_model_name(current, event.network))
        if own is not None and own.name != name:
            return None, f"{event.network} has its own {own.model_id}: a retrain answered it"
        return current, ""

    async def _catch_up(self, event: RetrainEvent) -> None:
        """Wait (a little) until the history holds the readings up to the detection."""
        wanted = datetime.fromisoformat(event.detected_at).timestamp()
        deadline = time.monotonic() + CATCH_UP_S
        while (self.history.newest_s or 0) < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    def _recent(self, event: RetrainEvent, serving: Version) -> GridDataset:
        """The network's recent readings on its grid: the serving model's sensors, or, for a
        universal model (any sensor, any step), the network's sensors on its configured step."""
        card, network = serving.card, event.network
        if card.kind == UNIVERSAL:  # its own sensors once fine-tuned for the network
            step = self.steps.get(network) or self.settings.step_s or DEFAULT_STEP_S
            sensors = card.sensors or self.history.sensors_of(network)
            return self.history.grid(network, sensors, step, network)
        return self.history.grid(serving.name, card.sensors, card.step_s, network)

    def _retrain(self, event: RetrainEvent, serving: Version, recent: GridDataset) -> Outcome:
        settings = self.settings
        holdout_from = recent.n_steps - settings.retrain_holdout_steps
        name = network_model_name(serving, event.network)
        version = self.registry.next_version(name)
        # fitted and judged on the network's clock, as its worker serves (STCAST_TIMEZONE)
        local = on_clock(recent, self.zones.get(event.network, settings.timezone))
        with tempfile.TemporaryDirectory(prefix="stcast-challenger-") as tmp:
            tuned = self._fine_tune(serving, local, holdout_from, Path(tmp), name, version)
            verdict: dict[str, Any] = {"holdout": None, "wins": True}  # the trial judges it
            if holdout_from < recent.n_steps:
                times = recent.timestamps()
                verdict = compare(
                    serving.path, Path(tmp), local, holdout_from, settings.retrain_min_gain
                )
                verdict["holdout"] = {"from": format_ts(int(times[holdout_from]) * 1000),
                                      "to": format_ts(int(times[-1]) * 1000)}  # fmt: skip
            validation = {**verdict, "event": event.id, **tuned}
            if not verdict["wins"]:
                return Outcome(event.id, "rejected", _versus(validation), validation=validation)
            published = self.registry.publish(Path(tmp))
        return Outcome(event.id, "published", _versus(validation), published.model_id, validation)

    def _fine_tune(
        self,
        serving: Version,
        recent: GridDataset,
        holdout_from: int,
        out: Path,
        name: str,
        version: str,
    ) -> dict[str, Any]:
        """The challenger, in ``out``: the serving model fine-tuned on the recent readings
        before the holdout; what the fine-tuning took."""
        settings = self.settings
        if serving.card.kind == UNIVERSAL:
            from models.finetune_universal import fine_tune_recent

            result = fine_tune_recent(
                serving.path, recent, holdout_from, out, name, version,
                max_seconds=settings.retrain_max_s, threads=settings.retrain_threads,
            )  # fmt: skip
            return {
                "fine_tuning_s": round(result.seconds, 1),
                "epochs": result.epochs,
                "best_epoch": result.best_epoch,  # 0: the serving weights were best
                "last_epoch_share": round(result.last_epoch_share, 3),  # < 1: budget cut it
            }
        from models.finetuning import fine_tune

        tuned = fine_tune(
            serving.path,
            recent,
            holdout_from,
            out,
            version,
            max_seconds=settings.retrain_max_s,
            threads=settings.retrain_threads,
        )
        return {
            "fine_tuning_s": round(tuned.seconds, 1),
            "samples": tuned.samples,
            "epochs": tuned.epochs,
        }


def on_clock(recent: GridDataset, zone: str) -> GridDataset:
    """``recent`` (a history of ticks stamped in UTC) with its times on ``zone``'s wall clock,
    which a worker with that ``STCAST_TIMEZONE`` gives its model: shifted by the offset of the
    newest reading (a change of summer time inside the history leaves its older part an hour
    off); unchanged without a zone.

    >>> from datetime import UTC, datetime
    >>> import numpy as np
    >>> utc = GridDataset("n", np.zeros((3, 1, 1)), datetime(2016, 7, 1, 8, tzinfo=UTC), 300,
    ...                   ("n/a",), ("value",))
    >>> on_clock(utc, "America/Los_Angeles").start.isoformat()  # PDT: UTC-7
    '2016-07-01T01:00:00+00:00'
    """
    if not zone:
        return recent
    newest = int(recent.timestamps()[-1])
    offset = int(local_seconds(np.array([newest]), zone_named(zone, "timezone"))[0]) - newest
    return replace(recent, start=recent.start + timedelta(seconds=offset))


def superseded(raws: list[bytes]) -> list[tuple[str, str | None]]:
    """For each retrain event of a batch read in order (one partition: a network's events are
    keyed to one), its id ("?" where unreadable) and the id of a later drift event in the batch
    for the same network and model, or None. A backlog (a stream replayed fast raises an
    event per cool-down of event time, faster than fine-tunings end) is answered by
    fine-tuning once on the newest readings, not once per event on readings a newer event will
    cover anyway; rollbacks are never skipped.

    >>> from stream_app.core.retrain_events import RetrainEvent
    >>> def event(i, net, reason="drift"):
    ...     return RetrainEvent(i, net, reason, (), "2016-07-01T00:00:00Z", "m@1", {}).encode()
    >>> [newest for _, newest in superseded([event("a", "n1"), event("b", "n2"),
    ...                                       event("c", "n1"), b"{"])]
    ['c', None, None, None]
    >>> superseded([event("a", "n1"), event("r", "n1", ROLLBACK), event("c", "n1")])
    [('a', 'c'), ('r', None), ('c', None)]
    """
    keys: list[tuple[str, str] | None] = []
    ids: list[str] = []
    for raw in raws:
        try:
            event = RetrainEvent.decode(raw)
        except ValueError:
            keys.append(None)
            ids.append("?")
            continue
        keys.append(None if event.reason == ROLLBACK else (event.network, event.model))
        ids.append(event.id)
    last = {key: i for i, key in enumerate(keys) if key is not None}
    return [
        (ids[i], ids[last[key]] if key is not None and last[key] > i else None)
        for i, key in enumerate(keys)
    ]


async def _commit(events: AIOKafkaConsumer) -> None:
    """Commit the events handled; where the group rebalanced meanwhile (a long fine-tuning
    outlasted the poll interval), say so and go on: the group is rejoined at the next read,
    and events read again are answered again (a published retrain makes them stale)."""
    try:
        await events.commit()
    except CommitFailedError as exc:
        log.warning("could not commit the retrain events handled (%s); rejoining", exc)


def history_span_s(settings: Settings, step_s: int) -> int:
    """Event time of a network's readings kept to fine-tune and validate on:
    ``retrain_history_s``, and at least ``MIN_HISTORY_STEPS`` of the network's steps (three
    days at 5 minutes, 36 days hourly, 864 days daily), so that a retrain at any step has the
    universal model's day of context, the horizon and the holdout, and windows to fit on."""
    return int(max(settings.retrain_history_s, MIN_HISTORY_STEPS * step_s))


def network_model_name(serving: Version, network: str) -> str:
    """The registry name a retrain publishes under: the serving model's, except that the
    bundled universal model, fine-tuned for one network, becomes that network's own model."""
    if serving.card.kind == UNIVERSAL and serving.name == "universal":
        return f"{network}-universal"
    return serving.name


def compare(
    champion_dir: Path, challenger_dir: Path, recent: Any, holdout_from: int, min_gain: float
) -> dict[str, Any]:
    """The holdout comparison of two model directories, as the update's ``validation``."""
    from .challenger import compare as compare_forecasters

    champion = OnnxForecaster(champion_dir, provider="cpu", step_s=recent.step_s)
    challenger = OnnxForecaster(challenger_dir, provider="cpu", step_s=recent.step_s)
    masked = champion.card.training.get("protocol", "basicts") == "basicts"
    verdict = compare_forecasters(
        champion, challenger, recent, holdout_from, masked=masked, min_gain=min_gain
    )
    return verdict.to_json()


async def announce(
    producer: AIOKafkaProducer,
    settings: Settings,
    version: Version,
    validation: dict[str, Any],
) -> None:
    """Put ``version``'s model update on ``stcast.models``; workers swap to it."""
    record = version.announcement(**validation)
    await producer.send_and_wait(
        settings.models_topic, json.dumps(record).encode(), key=version.name.encode()
    )
    log.info("announced %s on %s", version.model_id, settings.models_topic)


def announce_now(settings: Settings, version: Version, validation: dict[str, Any]) -> None:
    """Announce ``version`` from outside an event loop (``stcast models --announce``)."""

    async def once() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", **producer_options(settings)
        )
        await producer.start()
        try:
            await announce(producer, settings, version, validation)
        finally:
            await producer.stop()

    asyncio.run(once())


def _versus(verdict: dict[str, Any]) -> str:
    """The comparison in words: the two MAEs, the windows and hours they cover, the tuning."""
    if "challenger_mae" not in verdict:
        text = "no holdout: the workers' trial judges it"
    else:
        text = (
            f"holdout MAE {verdict['challenger_mae']:.3f} (challenger) vs "
            f"{verdict['champion_mae']:.3f} (serving), {verdict['holdout_pairs']} windows"
        )
    held = verdict.get("holdout")
    if held:
        text += f" from {held['from']} to {held['to']}"
    if "epochs" in verdict:
        epochs = verdict["epochs"]
        text += f"; fine-tuned {epochs} epoch{'' if epochs == 1 else 's'}"
        share = verdict.get("last_epoch_share", 1.0)
        if share < 1.0:
            text += f" (the last cut at {share:.0%} by the time budget)"
        if "best_epoch" in verdict:
            text += f", kept epoch {verdict['best_epoch']}"
    if "fine_tuning_s" in verdict:
        text += f" in {verdict['fine_tuning_s']} s"
    return text


def _summary(outcome: Outcome) -> tuple[str, str, str]:
    result = outcome.result + (f" {outcome.published}" if outcome.published else "")
    return outcome.event, result, outcome.detail
