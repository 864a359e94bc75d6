"""The networks a worker serves: from its flags (one), or from the file ``STCAST_NETWORKS`` names.

A network is a name, a grid step, a model (default: the bundled ``universal``), optionally a
graph file, and how its ticks are keyed: ``sensor`` (single ticks, any worker may hold a sensor;
no neighbours) or ``network`` (a tick batch per step on one partition; neighbours from the
graph). The file is TOML or JSON::

    [[network]]                      # {"networks": [{"name": "pems08", ...}, ...]} in JSON
    name = "pems08"
    step_s = 300
    graph = "graphs/pems08.csv"
    keyed = "network"
    forecast_records = "batch"       # one forecast batch record per tick batch (default: each)
    default = true                   # ticks that name no network (else: the first listed)

    [[network]]
    name = "air"
    step_s = 3600
    model = "models/air-universal"   # default: universal; "none": the baseline

Every mistake is a ``NetworksError`` that names the file, the entry and what to change.

``NetworkRouter`` serves several networks in one worker: each message goes to its network's
pipeline, the one its tick batch names (``"network"`` beside ``"ticks"``), else the one its
(first) tick names, else the default; an undeclared network makes the message a dead letter
(``unknown_network``). Inside a pipeline a tick that names another network is refused the same
way, so a batch never mixes networks. Messages keep their order within each network.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .core.chunks import Output, TickMessage, shallow_message, typed_json
from .core.forecasters import Forecaster
from .core.metrics import Metrics
from .core.pipeline import Pipeline
from .core.records import (
    Incoming,
    Reason,
    Rejected,
    decode_json,
    encode_dead_letter,
    may_nest_too_deeply,
)
from .settings import Settings, env_name, zone_named

KEYS = ("name", "step_s", "model", "graph", "keyed", "forecast_records", "default", "timezone")
KEYED = ("sensor", "network")


class NetworksError(ValueError):
    """A networks file (or flag) that cannot be served as it is."""


@dataclass(frozen=True)
class NetworkSpec:
    """One network as declared."""

    name: str
    step_s: int
    model: str = ""
    graph: str = ""
    keyed: str = "sensor"
    default: bool = False
    forecast_records: str = "each"
    timezone: str = ""  # the network's clock (IANA); empty: the workers' STCAST_TIMEZONE

    def settings(self, base: Settings) -> Settings:
        """``base`` with this network's own grid, model, graph, keying and clock."""
        return base.replace(
            network=self.name,
            step_s=self.step_s,
            model_dir=self.model,
            graph=self.graph,
            keyed=self.keyed,
            forecast_records=self.forecast_records,
            timezone=self.timezone or base.timezone,
        )


def declared_networks(settings: Settings) -> list[NetworkSpec]:
    """The networks of ``STCAST_NETWORKS``, or the one the flags describe; the default first."""
    if not settings.networks:
        one = NetworkSpec(
            settings.network,
            settings.step_s,
            settings.model_dir,
            settings.graph,
            settings.keyed,
            forecast_records=settings.forecast_records,
            timezone=settings.timezone,
        )
        return [one]
    return load_networks(Path(settings.networks))


def load_networks(path: Path) -> list[NetworkSpec]:
    """The file's networks, checked, the default one first."""
    entries = _entries(path)
    specs = [_spec(entry, i, path) for i, entry in enumerate(entries)]
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise NetworksError(f"{path}: networks {twice} are declared more than once")
    defaults = [spec for spec in specs if spec.default]
    if len(defaults) > 1:
        raise NetworksError(
            f"{path}: {[s.name for s in defaults]} are all marked default; mark one"
        )
    first = defaults[0] if defaults else specs[0]
    return [first, *(spec for spec in specs if spec is not first)]


def _entries(path: Path) -> list[Any]:
    where = f"{env_name('networks')}={path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NetworksError(f"{where}: cannot read it ({exc.strerror})") from None
    try:
        raw: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise NetworksError(f"{where} is not valid {kind}: {exc}") from None
    entries = raw.get("networks", raw.get("network")) if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not entries:
        raise NetworksError(
            f"{where}: expected a list of networks ([[network]] tables in TOML, "
            '{"networks": [...]} in JSON), found none'
        )
    return entries


def _spec(entry: Any, index: int, path: Path) -> NetworkSpec:
    where = f"{path}: network {index + 1}"
    if not isinstance(entry, dict):
        raise NetworksError(f"{where} must be a table of {list(KEYS)}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise NetworksError(f"{where} has unknown keys {unknown}: expected some of {list(KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise NetworksError(f"{where}: 'name' must be a non-empty string without '/'")
    step = entry.get("step_s")
    if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
        raise NetworksError(f"{where} ({name}): 'step_s' must be a positive number of seconds")
    keyed = entry.get("keyed", "sensor")
    if keyed not in KEYED:
        raise NetworksError(f"{where} ({name}): 'keyed' must be one of {list(KEYED)}")
    strings = {key: entry.get(key, "") for key in ("model", "graph")}
    for key, value in strings.items():
        if not isinstance(value, str):
            raise NetworksError(f"{where} ({name}): {key!r} must be a path")
    graph = _relative(strings["graph"], path)
    if graph and not Path(graph).is_file():
        raise NetworksError(f"{where} ({name}): the graph file {graph} does not exist")
    if graph and keyed != "network":
        raise NetworksError(
            f"{where} ({name}): a graph needs keyed = 'network' (a step's ticks on one "
            "worker); a sensor-keyed network is served without neighbours"
        )
    model = strings["model"]
    local = _relative(model, path)
    if model and Path(local).is_dir():
        model = local
    default = entry.get("default", False)
    if not isinstance(default, bool):
        raise NetworksError(f"{where} ({name}): 'default' must be true or false")
    records = entry.get("forecast_records", "each")
    if records not in ("each", "batch"):
        raise NetworksError(f"{where} ({name}): 'forecast_records' must be 'each' or 'batch'")
    zone = entry.get("timezone", "")
    try:
        if not isinstance(zone, str):
            raise ValueError(f"{where} ({name}): 'timezone' must be a name such as Europe/Paris")
        if zone:
            zone_named(zone, f"{where} ({name}): timezone")
    except ValueError as exc:
        raise NetworksError(str(exc)) from None
    return NetworkSpec(name, step, model, graph, keyed, default, records, zone)


def _relative(value: str, path: Path) -> str:
    """A path in the file is relative to the file."""
    if not value or Path(value).is_absolute():
        return value
    return str(path.parent / value)


class NetworkRouter:
    """The pipelines of several networks behind ``Pipeline``'s interface for the shell."""

    def __init__(
        self, pipelines: Mapping[str, Pipeline], default: str, metrics: Metrics | None = None
    ) -> None:
        if default not in pipelines:
            raise ValueError(f"the default network {default!r} is not among {sorted(pipelines)}")
        self.pipelines = dict(pipelines)
        self.default = default
        self.metrics = metrics

    @property
    def step_s(self) -> int:
        """The finest grid step of the networks."""
        return min(p.step_s for p in self.pipelines.values())

    @property
    def history_span_s(self) -> int:
        """Event time whose ticks rebuild every network's state (see ``restoring``)."""
        return max(p.history_span_s for p in self.pipelines.values())

    @property
    def sensors(self) -> int:
        return sum(p.sensors for p in self.pipelines.values())

    def step(self, messages: Sequence[Incoming]) -> Iterator[Output]:
        """Route each message; yield each network's outputs, and the refused messages'."""
        groups, refused = self._route(messages)
        for network, group in groups.items():
            yield from self.pipelines[network].step(group)
        if refused.dead_letters:
            yield refused

    def restore(self, messages: Sequence[Incoming]) -> None:
        groups, _ = self._route(messages, counting=False)
        for network, group in groups.items():
            self.pipelines[network].restore(group)

    def forget(self, partitions: Collection[int]) -> int:
        return sum(p.forget(partitions) for p in self.pipelines.values())

    def swap(self, forecaster: Forecaster, *, canary: bool = True, replacing: str = "") -> None:
        """Serve ``forecaster`` in the networks it is for: those serving a model of its name,
        or the network its name begins with (``pems08-universal`` for ``pems08``), or, for a
        rollback, those serving the model it replaces (``replacing``, name@version)."""
        name = forecaster.model_id.partition("@")[0]
        targets = [
            network
            for network, pipeline in self.pipelines.items()
            if pipeline.forecaster.model_id.partition("@")[0] == name
            or name.startswith(f"{network}-")
            or pipeline.forecaster.model_id == replacing
        ]
        if not targets:
            raise ValueError(f"{forecaster.model_id} is for none of the networks served here")
        for network in targets:
            self.pipelines[network].swap(forecaster, canary=canary, replacing=replacing)

    def _route(
        self, messages: Sequence[Incoming], counting: bool = True
    ) -> tuple[dict[str, list[Incoming]], Output]:
        groups: dict[str, list[Incoming]] = {}
        refused = Output()
        for message in messages:
            network = self.network_of(message)
            if network in self.pipelines:
                groups.setdefault(network, []).append(message)
                continue
            detail = f"network {network!r} is not served here (serving {sorted(self.pipelines)})"
            record = encode_dead_letter(message, Reason.UNKNOWN_NETWORK, detail, message.value)
            refused.dead_letters.append((message.key, record))
            if counting and self.metrics is not None:
                self.metrics.ticks.inc()
                self.metrics.rejected.labels(reason=str(Reason.UNKNOWN_NETWORK)).inc()
        return groups, refused

    def network_of(self, message: Incoming) -> str:
        """The network a message names, else the default one (unreadable: the default's
        pipeline dead-letters it with the reason)."""
        named = _named_fast(message.value)
        if named is _UNREAD:
            named = named_network(message.value)
        return named if isinstance(named, str) else self.default


class _RoutedTick(msgspec.Struct):
    network: Any = None


class _Routed(msgspec.Struct):
    """What routing reads of a message; every other field is skipped (and checked)."""

    network: Any = None
    ticks: list[_RoutedTick] | None = None


_ROUTED = msgspec.json.Decoder(_Routed)
_UNREAD = object()


def _named_fast(raw: bytes | None) -> object:
    """``named_network``'s answer from a typed decoder that skips the ticks' other fields (a
    tick batch of 170 sensors: 31 us instead of 154), or ``_UNREAD`` where only the reference
    can say: anything msgspec refuses (NaN spelled out, a tick that is no object, ...), text
    that is not UTF-8 (msgspec does not check what it skips) and what may nest too deeply."""
    if raw is None:
        return _UNREAD
    # msgspec skips fields however deep they nest, and the reference refuses what nests deeper
    # than ``records.MAX_DEPTH``: a message that may (a tick batch of over 500 ticks too) is
    # read whole by the typed decoder that refuses fields a tick does not name
    routed: _Routed | TickMessage | None = (
        shallow_message(raw) if may_nest_too_deeply(raw) else typed_json(_ROUTED, raw)
    )
    if routed is None:
        return _UNREAD
    named = routed.network
    if named is None and routed.ticks:
        named = routed.ticks[0].network
    return named


def named_network(raw: bytes | None) -> object:
    """What a message names as its network (the reference, through ``json``): its
    ``network``, else its first tick's; None where it names none or cannot be read."""
    try:
        obj: Any = decode_json(raw)
    except Rejected:
        return None
    if not isinstance(obj, dict):
        return None
    named = obj.get("network")
    ticks = obj.get("ticks")
    if named is None and isinstance(ticks, list) and ticks and isinstance(ticks[0], dict):
        named = ticks[0].get("network")
    return named


Core = Pipeline | NetworkRouter  # what the shell steps: one network's pipeline, or a router
