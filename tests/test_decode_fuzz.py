"""Differential fuzzing: the columnar decoder and the reference one give the same verdicts.

Hypothesis writes messages as JSON text by hand, so that they can be everything DESIGN.md's
reasons name and more: duplicate keys, escaped key names, NaN and Infinity spelled out, numbers
past a float, nesting thousands deep, lone surrogates, control characters, bytes that are not
UTF-8, timestamps at the edges of the range, records without a value. Each micro-batch goes
through a pipeline on the columnar path and one on the reference path
(``Pipeline(columnar=False)``): their forecasts, dead letters (reason, detail, raw bytes) and
counters must be identical, byte for byte, and neither may raise. ``test_enough_messages``
proves the run fed at least 10,000 messages, and a real worker on the broker is fed the first
3,000 of them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from brokered import publish, read_all, topics, worker_settings
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_pipeline import TOPIC, FakeForecaster, make_pipeline, ts

from stream_app.core.chunks import columnar_ticks
from stream_app.core.forecasters import Persistence
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import MAX_DEPTH, Incoming, Rejected, decode_json
from stream_app.tools.broker import EmbeddedBroker
from stream_app.tools.services import WorkerProcess

EXAMPLES = 250
PER_EXAMPLE = 40  # the fewest messages an example feeds: 250 x 40 = 10,000
FED: list[int] = []
CORPUS: list[bytes | None] = []  # the generated messages, for the worker test at the end

_MAX_MS = 4_102_444_800_000

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
SENSORS = st.one_of(
    st.sampled_from(["a", "b", "c", "d"]).map(json.dumps),
    st.sampled_from(['""', '"\\ud800"', '"a\\u0000"', '"\\u00e9t\\u00e9"', '"caf\u00e9"']),
    text.map(json.dumps),
    st.sampled_from(["5", "null", "true", "[]", "{}", '["a"]']),
)
TIMES = st.one_of(
    st.integers(0, 12).map(lambda step: json.dumps(ts(step))),
    st.integers(0, 12).map(lambda step: json.dumps(ts(step).replace("Z", "+00:00"))),
    st.integers(0, 12).map(lambda step: json.dumps(ts(step)[:-1])),  # no offset
    st.integers(0, 12).map(lambda step: str((1_467_331_200 + step * 300) * 1000)),
    st.sampled_from(
        [
            "0",
            "-1",
            "-0",
            str(_MAX_MS - 1),
            str(_MAX_MS),
            str(10**30),
            "1.4673312e12",
            "1e3",
            '"0001-01-01T00:00:00Z"',
            '"9999-12-31T23:59:59Z"',
            '"2016-13-01T00:00:00Z"',
            '"2016-07-01T00:00:00+25:00"',
            '"2099-12-31T23:59:59Z"',
            '"not a time"',
            '""',
            "null",
            "true",
            "[]",
            '{"ts": 1}',
        ]
    ),
)
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.integers(-1000, 1000).map(str),
    st.floats(-100, 100).map(lambda v: json.dumps(round(v, 3))),
    st.sampled_from(
        [
            "null",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e400",
            "1e-400",
            str(10**400),
            str(2**53 + 1),
            str(-(2**63)),
            "-0",
            "-0.0",
            "1E5",
            '"1.0"',
            "true",
            "false",
            "[1]",
            "{}",
            "0.1e1",
            "01",
            "1.",
            ".5",
            "+1",
            "4.9e-324",
        ]
    ),
)
NETWORKS = st.sampled_from(['"net"', '"other"', "null", "5", '""'])
KEYS = {
    "sensor": st.sampled_from(['"sensor"', '"sens\\u006fr"']),
    "ts": st.just('"ts"'),
    "value": st.sampled_from(['"value"', '"valu\\u0065"']),
    "network": st.just('"network"'),
}
FIELDS = {"sensor": SENSORS, "ts": TIMES, "value": VALUES, "network": NETWORKS}
SPACE = st.sampled_from(["", "", "", " ", "\n\t", "\r\n  "])


@st.composite
def tick_object(draw: st.DrawFn) -> str:
    """A tick's JSON object: usually whole and valid, sometimes a field missing, repeated, of
    the wrong type, or with a stray field beside it."""
    names = ["sensor", "ts", "value"]
    if draw(st.integers(0, 3)) == 0:
        names.append("network")
    if draw(st.integers(0, 9)) == 0:
        names.remove(draw(st.sampled_from(names)))
    if draw(st.integers(0, 9)) == 0:
        names.append(draw(st.sampled_from(names or ["value"])))  # a duplicate key
    valid = draw(st.integers(0, 2)) > 0
    pairs = []
    for name in names:
        key = draw(KEYS[name])
        if valid and name == "sensor":
            value = draw(st.sampled_from(["a", "b", "c", "d"]).map(json.dumps))
        elif valid and name == "ts":
            value = json.dumps(ts(draw(st.integers(0, 12))))
        elif valid and name == "value":
            value = draw(st.floats(-100, 100).map(lambda v: json.dumps(round(v, 2))))
        else:
            value = draw(FIELDS[name])
        pairs.append(f"{key}:{draw(SPACE)}{value}")
    if draw(st.integers(0, 7)) == 0:
        stray = draw(st.sampled_from(['"x":[[[[]]]]', '"x":"\\ud800"', '"x":NaN', '"x":1e999']))
        pairs.insert(draw(st.integers(0, len(pairs))), stray)
    return "{" + draw(SPACE) + ",".join(pairs) + draw(SPACE) + "}"


@st.composite
def clean_batch(draw: st.DrawFn) -> str:
    """A gateway's tick batch: one timestamp, distinct sensors, numbers (the fast path)."""
    sensors = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True))
    stamp = draw(
        st.one_of(
            st.integers(0, 12).map(lambda step: json.dumps(ts(step))),
            st.sampled_from(['"2099-12-31T23:59:59Z"', "1467331500000", '"not a time"']),
        )
    )
    network = draw(st.sampled_from(["", ',"network":"net"', ',"network":null']))
    ticks = [
        f'{{"sensor":"{sensor}","ts":{stamp},"value":{draw(VALUES)}{network}}}'
        for sensor in sensors
    ]
    return '{"ticks":[' + ",".join(ticks) + "]}"


@st.composite
def message_text(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.integers(0, 22))
    if kind == 22:
        return None  # a record without a value (a tombstone)
    if kind >= 20:
        body = draw(clean_batch())
    elif kind < 10:
        body = draw(tick_object())
    elif kind < 15:
        elements = draw(
            st.lists(
                st.one_of(tick_object(), st.sampled_from(["5", "null", "[]", '"x"'])),
                max_size=6,
            )
        )
        key = draw(st.sampled_from(['"ticks"', '"tick\\u0073"']))
        body = "{" + key + ":[" + ",".join(elements) + "]}"
        if draw(st.integers(0, 9)) == 0:
            body = body[:-1] + ',"ticks":' + draw(st.sampled_from(["[]", "null", "5"])) + "}"
    elif kind < 17:
        body = draw(
            st.sampled_from(
                [
                    '{"ticks": null}', '{"ticks": {}}', "[]", "5", '"tick"', "null", "", " ",
                    '{"sensor":"a"', "{}", '{"a":1}',
                ]
            )
        )  # fmt: skip
    else:
        depth = draw(st.sampled_from([10, 400, 960, 985, 990, 995, 999, 3000, 100_000]))
        body = '{"sensor":"a","ts":"x","value":1,"x":' + "[" * depth + "]" * depth + "}"
    raw = body.encode("utf-8")
    damage = draw(st.integers(0, 14))
    if damage == 0 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif damage == 1:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"\xc3", b"\x01"])) + raw[at:]
    elif damage == 2:
        raw = b"\xef\xbb\xbf" + raw
    return raw


def _outputs(columnar: bool, messages: list[Incoming]) -> tuple[list[object], dict[str, float]]:
    registry = CollectorRegistry()
    pipeline = make_pipeline(FakeForecaster(), registry, network="net", columnar=columnar)
    seen: list[object] = []
    for start in range(0, len(messages), 7):  # several micro-batches, state carried over
        for output in pipeline.step(messages[start : start + 7]):
            seen += [("forecast", key, value) for key, value in output.forecasts]
            seen += [("dead", key, value) for key, value in output.dead_letters]
    counters = {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    return seen, counters


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # shrinking 60 messages takes minutes: not in CI
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(message_text(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE + 20))
def test_columnar_and_reference_agree(values: list[bytes | None]) -> None:
    messages = [Incoming(TOPIC, 0, offset, b"k", v) for offset, v in enumerate(values)]
    columnar, counted = _outputs(True, messages)
    reference, counted_reference = _outputs(False, messages)
    assert columnar == reference
    assert counted == counted_reference
    FED.append(len(messages))
    CORPUS.extend(values)


def test_enough_messages() -> None:
    """Runs after the fuzz test (pytest keeps the file's order): it fed 10,000 or more."""
    assert sum(FED) >= EXAMPLES * PER_EXAMPLE >= 10_000


def _share(predicate: Callable[[bytes], bool], values: list[bytes]) -> float:
    return sum(map(predicate, values)) / len(values)


def test_the_columnar_decoder_reads_what_it_should() -> None:
    """It must answer for well-formed ticks and batches (else nothing is faster), and decline
    what it cannot read exactly."""
    good = [
        json.dumps({"sensor": "a", "ts": ts(1), "value": 1.5}).encode(),
        json.dumps({"ticks": [{"sensor": "a", "ts": ts(1), "value": None}]}).encode(),
        json.dumps({"sensor": "caf\u00e9", "ts": 1, "value": 2, "network": "n"}).encode(),
    ]
    bad = [b'{"sensor":"a","ts":1,"value":NaN}', b'{"sensor":"a","ts":1,"value":1,"x":"\xff"}',
           b'{"sensor":"a","ts":1}', b'{"sensor":"a","ts":1.5,"value":1}', b"[1]"]  # fmt: skip
    assert _share(lambda raw: columnar_ticks(raw) is not None, good) == 1.0
    assert _share(lambda raw: columnar_ticks(raw) is None, bad) == 1.0
    rows, batched = columnar_ticks(good[1]) or ([], False)
    assert batched and rows[0].sensor == "a" and rows[0].value is None


def test_nesting_beyond_the_limit_is_malformed_wherever_it_is_read() -> None:
    """msgspec skips a field a tick does not name however deep it nests; ``json`` alone gives
    up at Python's recursion limit less its caller's frames. Both decoders must refuse JSON
    nested deeper than ``MAX_DEPTH`` and read what is not, from any depth of the stack; the
    columnar one still reads shallow fields of a message's own, in its ticks too."""

    def nested(depth: int) -> bytes:
        other = "[" * (depth - 1) + "]" * (depth - 1)  # inside the message's own braces
        return ('{"sensor":"a","ts":1,"value":1,"x":' + other + "}").encode()

    def refused(raw: bytes, frames: int = 0) -> bool:
        if frames:
            return refused(raw, frames - 1)
        try:
            decode_json(raw)
        except Rejected:
            return True
        return False

    for depth in (2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 960, 990, 995, 999, 3000):
        deep = depth > MAX_DEPTH
        assert refused(nested(depth)) == deep, depth
        assert refused(nested(depth), frames=200) == deep, depth  # from deeper in the stack
        assert (columnar_ticks(nested(depth)) is None) == deep, depth
    batch = b'{"gateway":{"id":[7]},"ticks":[{"sensor":"a","ts":1,"value":2,"unit":"m"}]}'
    rows, batched = columnar_ticks(batch) or ([], False)
    assert batched and rows[0].sensor == "a" and rows[0].value == 2


@pytest.mark.integration
def test_a_worker_fed_the_generated_messages_never_crashes(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The first 3,000 generated messages through a real worker on the broker: it stays up,
    logs no traceback, and forecasts and dead-letters exactly what the reference path does."""
    if not CORPUS:
        test_columnar_and_reference_agree()  # run alone: generate them
    values = CORPUS[:3000]
    reference = Pipeline(
        Persistence(horizon=2, window=3), step_s=300, network="pems08", columnar=False
    )
    expected = {"forecasts": 0, "dead": 0}
    expected_dead: list[bytes] = []
    messages = [Incoming(TOPIC, 0, offset, b"k", v) for offset, v in enumerate(values)]
    for output in reference.step(messages):
        expected["forecasts"] += len(output.forecasts)
        expected["dead"] += len(output.dead_letters)
        expected_dead += [record for _, record in output.dead_letters]
    # the examples reuse the same 13 steps, so after the first most good ticks are late
    assert expected["forecasts"] > 0 and expected["dead"] > 1000

    names = topics(broker)
    log_path = tmp_path / "worker.log"
    settings = worker_settings(broker, names, window=3, horizon=2)
    with WorkerProcess(settings, log_path=log_path) as worker:
        asyncio.run(publish(broker.bootstrap_servers, names["ticks"], [(b"k", v) for v in values]))
        dead = asyncio.run(read_all(broker.bootstrap_servers, names["dlq"], expected["dead"], 120))
        forecasts = asyncio.run(
            read_all(broker.bootstrap_servers, names["forecasts"], expected["forecasts"], 60)
        )
        alive = worker.poll() is None
        status = worker.stop()
    assert alive and status == 0
    assert "Traceback" not in log_path.read_text()
    got = Counter(_where(record.value) for record in dead)
    want = Counter(_where(record) for record in expected_dead)
    notes = [line for line in log_path.read_text().splitlines() if " INFO " not in line]
    assert got == want, f"missing {want - got}, extra {got - want}; worker log: {notes[-20:]}"
    assert (len(forecasts), len(dead)) == (expected["forecasts"], expected["dead"])


def _where(record: bytes) -> tuple[int, str, str]:
    """A dead letter's offset, reason and detail."""
    letter = json.loads(record)
    return letter["offset"], letter["reason"], letter["detail"]
