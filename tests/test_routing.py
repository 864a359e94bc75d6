"""Routing a message to its network: the typed fast reader and the ``json`` reference agree.

``NetworkRouter.network_of`` reads only ``network`` and the ticks' ``network`` with a typed
msgspec decoder and falls back to the reference (``named_network``) wherever msgspec refuses
the text or might read what ``json`` would not (text that is not UTF-8, deep nesting). Hypothesis
writes the messages by hand, as ``test_decode_fuzz`` does, so that they can be anything: the
answer must be the reference's whenever the fast reader gives one.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.records import MAX_DEPTH
from stream_app.networks import _UNREAD, _named_fast, named_network

NAMES = st.sampled_from(
    ['"a"', '"b"', "null", "5", "1.5", "1e999", "NaN", "-Infinity", "true", "[]", "{}",
     '["a"]', '"\\ud800"', '"caf\\u00e9"', '"caf\u00e9"', '"a\\u0000"', "1" * 30]
)  # fmt: skip
KEYS = st.sampled_from(
    ['"network"', '"netw\\u006frk"', '"sensor"', '"ts"', '"value"', '"x"', '"ticks"']
)
DEPTHS = st.sampled_from([1, 3, 400, 990, 995, 997, 999, 1_000, 1_200])  # json's limit: ~995
NESTED = st.one_of(
    DEPTHS.map(lambda depth: "[" * depth + "]" * depth),
    DEPTHS.map(lambda depth: '{"y":' * depth + "1" + "}" * depth),
)
CLEAN = st.sampled_from(['"x"', "0.25", "7", "null", '"2016-07-01T00:00:00Z"', '{"network":"c"}'])
WEIRD = st.one_of(
    NAMES, st.sampled_from(['"a\x01b"', '"\\q"', "01", "[1,]", "tru", "NaN", '"\\udc00"'])
)


@st.composite
def junk(draw: st.DrawFn) -> str:
    """A value that is mostly well-formed: text msgspec refuses sends every message to the
    reference, and what is compared is what the fast reader answers."""
    kind = draw(st.integers(0, 19))
    return draw(WEIRD if kind == 0 else NESTED if kind == 1 else CLEAN)


JUNK = junk()


@st.composite
def tick(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:  # not an object
        return draw(JUNK)
    fields = draw(st.lists(st.tuples(KEYS, JUNK), max_size=4))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), ('"network"', draw(NAMES)))
    return "{" + ",".join(f"{k}:{v}" for k, v in fields) + "}"


@st.composite
def message(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(KEYS, JUNK), max_size=3))
    if draw(st.booleans()):
        fields.append(('"network"', draw(NAMES)))
    if draw(st.booleans()):
        ticks = draw(st.lists(tick(), max_size=5))
        fields.append(('"ticks"', "[" + ",".join(ticks) + "]"))
    draw(st.randoms()).shuffle(fields)
    text = "{" + ",".join(f"{k}:{v}" for k, v in fields) + "}"
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from(["[" + text + "]", text + ",", "\ufeff" + text, text[:-1]]))
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # bytes that are not UTF-8, somewhere
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3"])) + raw[at:]
    return raw


@settings(max_examples=3_000, deadline=None)
@given(message())
def test_the_fast_reader_names_what_the_reference_names(raw: bytes) -> None:
    fast = _named_fast(raw)
    if fast is not _UNREAD:
        assert fast == named_network(raw)


def test_a_tick_batch_and_a_tick_are_read_fast() -> None:
    ticks = [{"sensor": f"s{i}", "ts": "2016-07-01T00:00:00Z", "value": i} for i in range(170)]
    assert _named_fast(json.dumps({"network": "a", "ticks": ticks}).encode()) == "a"
    ticks[0]["network"] = "b"
    assert _named_fast(json.dumps({"ticks": ticks}).encode()) == "b"
    assert _named_fast(json.dumps({**ticks[1], "network": "c"}).encode()) == "c"
    assert _named_fast(json.dumps(ticks[1]).encode()) is None  # names none: the default's


def test_what_only_the_reference_can_read_goes_to_it() -> None:
    # the reference refuses JSON nested deeper than MAX_DEPTH, and msgspec reads deeper: a
    # message with more brackets than that, which may nest deeper, goes to the reference
    edge = b'{"x":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b',"network":"a"}'
    assert _named_fast(edge) == "a" and named_network(edge) == "a"
    deep = b'{"x":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b',"network":"a"}'
    assert _named_fast(deep) is _UNREAD and named_network(deep) is None
    deeper = b'{"x":' + b"[" * 5_000 + b"]" * 5_000 + b',"network":"a"}'
    assert _named_fast(deeper) is _UNREAD and named_network(deeper) is None
    assert _named_fast(b'{"x":NaN,"network":"a"}') is _UNREAD  # json reads NaN
    assert named_network(b'{"x":NaN,"network":"a"}') == "a"
    assert _named_fast(b'{"x":"\xff","network":"a"}') is _UNREAD
    assert named_network(b'{"x":"\xff","network":"a"}') is None


def test_a_large_tick_batch_is_routed_by_the_typed_reader_unless_it_has_fields_of_its_own() -> None:
    ticks = [{"sensor": f"s{i}", "ts": 1, "value": 1.5, "network": "b"} for i in range(600)]
    large = json.dumps({"ticks": ticks}).encode()  # 601 brackets: it could nest that deep
    assert _named_fast(large) == "b" == named_network(large)
    ticks[0]["unit"] = ["veh"]  # a field of its own, which the strict reader refuses
    other = json.dumps({"ticks": ticks}).encode()
    assert _named_fast(other) is _UNREAD and named_network(other) == "b"
