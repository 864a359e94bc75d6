"""Rolling windows on a grid: fill, impute, holes, out-of-order, late and duplicate readings."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.records import Reason, Rejected
from stream_app.core.windows import Impute, RollingWindow


def nan_list(values: list[float]) -> list[float | None]:
    """NaN as None, so that lists with holes compare with ==."""
    return [None if math.isnan(v) else v for v in values]


def test_in_order_fill_is_full_only_after_length_slots() -> None:
    window = RollingWindow(length=3)
    seen = []
    for slot, value in enumerate([10.0, 11.0, 12.0, 13.0]):
        assert window.add(100 + slot, value) == 0
        seen.append((window.is_full, nan_list(window.values)))
    assert seen == [
        (False, [None, None, 10.0]),
        (False, [None, 10.0, 11.0]),
        (True, [10.0, 11.0, 12.0]),
        (True, [11.0, 12.0, 13.0]),
    ]
    assert window.newest == 103
    assert window.imputed == 0


def test_linear_imputation_of_a_short_gap() -> None:
    window = RollingWindow(length=5, max_gap=3, impute=Impute.LINEAR)
    window.add(0, 10.0)
    window.add(1, 20.0)
    assert window.add(5, 60.0) == 3
    assert window.values == [20.0, 30.0, 40.0, 50.0, 60.0]
    assert window.imputed == 3
    assert window.is_full


def test_carry_imputation_of_a_short_gap() -> None:
    window = RollingWindow(length=5, max_gap=3, impute=Impute.CARRY)
    window.add(0, 10.0)
    window.add(1, 20.0)
    assert window.add(4, 50.0) == 2
    assert window.values == [10.0, 20.0, 20.0, 20.0, 50.0]
    assert window.imputed == 2
    assert window.is_full


def test_a_gap_longer_than_max_gap_stays_until_it_scrolls_out() -> None:
    window = RollingWindow(length=4, max_gap=1)
    for slot in range(4):
        window.add(slot, float(slot))
    assert window.add(6, 6.0) == 0  # slots 4 and 5 missing: 2 > max_gap
    assert nan_list(window.values) == [3.0, None, None, 6.0]
    assert not window.is_full
    window.add(7, 7.0)
    assert nan_list(window.values) == [None, None, 6.0, 7.0]
    assert not window.is_full
    window.add(8, 8.0)
    assert not window.is_full
    window.add(9, 9.0)
    assert window.values == [6.0, 7.0, 8.0, 9.0]
    assert window.is_full
    assert window.imputed == 0


def test_out_of_order_reading_fills_a_hole_and_imputes_neighbours() -> None:
    window = RollingWindow(length=6, max_gap=1)
    window.add(0, 0.0)
    window.add(4, 40.0)  # holes 1, 2, 3: too long to impute
    assert nan_list(window.values) == [None, 0.0, None, None, None, 40.0]
    assert window.add(2, 20.0) == 2  # splits the run into two holes of one
    assert window.values[1:] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert window.imputed == 2
    assert not window.is_full  # slot -1 was never seen
    window.add(5, 50.0)
    assert window.values == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert window.is_full


def test_a_real_reading_replaces_an_imputed_value() -> None:
    window = RollingWindow(length=5, max_gap=3)
    window.add(0, 0.0)
    window.add(4, 40.0)
    assert window.values == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert window.imputed == 3
    assert window.add(2, 100.0) == 2  # the two others re-imputed from it
    assert window.values == [0.0, 50.0, 100.0, 70.0, 40.0]
    assert window.imputed == 2
    assert window.is_full
    assert window.add(1, 1.0) == 0
    assert window.values == [0.0, 1.0, 100.0, 70.0, 40.0]
    assert window.imputed == 1


def test_late_reading_behind_the_window() -> None:
    window = RollingWindow(length=3)
    window.add(10, 1.0)
    window.add(8, 0.5)  # the oldest slot of the window is still accepted
    with pytest.raises(Rejected) as caught:
        window.add(7, 2.0)
    assert caught.value.reason is Reason.LATE
    assert window.values == [0.5, 0.75, 1.0]  # and slot 9 imputed between them


def test_duplicate_reading() -> None:
    window = RollingWindow(length=3)
    window.add(10, 1.0)
    window.add(11, 2.0)
    for slot in (10, 11):
        with pytest.raises(Rejected) as caught:
            window.add(slot, 9.0)
        assert caught.value.reason is Reason.DUPLICATE
    assert nan_list(window.values) == [None, 1.0, 2.0]


def test_none_reading_leaves_a_hole_and_can_be_filled_later() -> None:
    window = RollingWindow(length=3, max_gap=0)
    window.add(0, 1.0)
    window.add(1, 2.0)
    assert window.add(2, None) == 0
    assert window.newest == 2
    assert nan_list(window.values) == [1.0, 2.0, None]
    assert not window.is_full
    window.add(2, 3.0)  # the real reading arrives after all: not a duplicate
    assert window.values == [1.0, 2.0, 3.0]
    assert window.is_full


def test_a_jump_further_than_the_window_resets_it() -> None:
    window = RollingWindow(length=3, max_gap=5)
    for slot in range(3):
        window.add(slot, 1.0)
    window.add(3 + 3, 7.0)  # slots 3..5 missing: the whole window scrolled out
    assert nan_list(window.values) == [None, None, 7.0]
    assert window.imputed == 0
    assert not window.is_full


# -- invariants --------------------------------------------------------------------------------

readings = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=25),
        st.one_of(st.none(), st.integers(min_value=-50, max_value=50).map(float)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    readings=readings,
    length=st.integers(min_value=1, max_value=8),
    max_gap=st.integers(min_value=0, max_value=4),
    impute=st.sampled_from(Impute),
)
def test_window_invariants(
    readings: list[tuple[int, float | None]], length: int, max_gap: int, impute: Impute
) -> None:
    window = RollingWindow(length, max_gap, impute)
    real: dict[int, float] = {}
    for slot, value in readings:
        before = (list(window.values), window.imputed, window.newest)
        try:
            filled = window.add(slot, value)
        except Rejected as rejected:
            assert rejected.reason in (Reason.LATE, Reason.DUPLICATE)
            assert (list(window.values), window.imputed, window.newest) == before
            continue
        assert filled >= 0
        if value is not None:
            real[slot] = value
        check_invariants(window, real)


def check_invariants(window: RollingWindow, real: dict[int, float]) -> None:
    assert window.newest is not None
    values = window.values
    assert len(values) == window.length
    slots = range(window.newest - window.length + 1, window.newest + 1)
    kinds = []  # "real", "imputed" or "hole" per slot, oldest first
    for slot, value in zip(slots, values, strict=True):
        if slot in real:
            assert value == real[slot]
            kinds.append("real")
        else:
            kinds.append("hole" if math.isnan(value) else "imputed")
    assert window.imputed == kinds.count("imputed")
    assert window.is_full == (kinds.count("hole") == 0) == (not any(map(math.isnan, values)))
    for run_kind, start, end in runs(kinds):
        bounded = start > 0 and end < window.length - 1
        if run_kind == "imputed":
            assert end - start + 1 <= window.max_gap
            assert "hole" not in (kinds[start - 1 : start] + kinds[end + 1 : end + 2])
        if run_kind == "hole" and bounded:  # a short hole between two readings is imputed
            assert end - start + 1 > window.max_gap


def runs(kinds: list[str]) -> list[tuple[str, int, int]]:
    found: list[tuple[str, int, int]] = []
    for i, kind in enumerate(kinds):
        if found and found[-1][0] == kind and found[-1][2] == i - 1:
            found[-1] = (kind, found[-1][1], i)
        else:
            found.append((kind, i, i))
    return found


@settings(max_examples=300, deadline=None)
@given(
    readings=readings,
    nexts=st.lists(st.integers(min_value=-50, max_value=50).map(float), min_size=1, max_size=12),
    length=st.integers(min_value=1, max_value=8),
    max_gap=st.integers(min_value=0, max_value=4),
    impute=st.sampled_from(Impute),
)
def test_push_is_add_at_the_next_slot(
    readings: list[tuple[int, float | None]],
    nexts: list[float],
    length: int,
    max_gap: int,
    impute: Impute,
) -> None:
    """``add``'s fast path for a reading at the next step leaves exactly what its general
    bookkeeping leaves."""
    pushed, added = RollingWindow(length, max_gap, impute), RollingWindow(length, max_gap, impute)
    for slot, value in readings:
        for window in (pushed, added):
            with contextlib.suppress(Rejected):
                window._add_anywhere(slot, value)
    if added.newest is None:
        return
    for value in nexts:
        slot = added.newest + 1
        assert pushed.add(slot, value) == added._add_anywhere(slot, value)
        assert pushed.values == added.values  # holes are the one NAN object in both
        state = ("newest", "imputed", "observed", "is_full")
        assert [getattr(pushed, a) for a in state] == [getattr(added, a) for a in state]
        assert bytes(pushed._is_imputed) == bytes(added._is_imputed)
