"""Monitors on the readings themselves: the faults a forecast error does not show.

The drift monitors (``drift``) watch errors; they are blind to a sensor that repeats its last
reading (the model follows it, and the error grows slowly) and to a sensor that became noisier
(the error rises less than the false-alarm budget lets them see). These checks watch each sensor's
real readings (never imputed ones), in arrival order, one vectorised pass per batch of distinct
sensor rows:

- **stuck**: the same value repeated. It fires when a run of equal readings reaches
  ``max(min_run, run_factor x`` the longest run the sensor showed before that did not fire``)``:
  a sensor that often repeats itself (low counts, a sensor at its floor overnight) must repeat for
  longer. It is stuck until its value changes; its forecasts are flagged meanwhile.
- **range**: a reading more than ``range_margin`` x the sensor's seen span outside the range it
  has shown. Readings that do not fire widen the range, so slow trends do not.
- **noise**: the size of the second difference (the reading minus the straight line through the
  two before, so that a trend does not count), divided by its usual size at that time of day
  (``bins`` per day, learned over about ``memory_days``), in a one-sided CUSUM with reference
  ``noise_k`` and threshold ``noise_h``. Doubled noise variance raises it by about 1.4.

Each may fire from the sensor's ``warmup``-th reading on, and not again within ``cooldown``
readings (stuck: not again until the value changed). The defaults come from
``benchmarks/calibrate_readings.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .forecasters import FloatArray, IntArray
from .metrics import Metrics
from .retrain_events import STUCK, Detection, DetectionListener

RANGE, NOISE = "range", "noise"
CHECKS = (STUCK, RANGE, NOISE)
DAY_S = 86_400
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Finding:
    """A check fired for a sensor row: which, at which grid slot, and its evidence
    (stuck: the run's length; range: how many spans outside; noise: the CUSUM's level)."""

    row: int
    check: str
    slot: int
    value: float


class ReadingMonitors:
    """The three checks for every sensor row of a pipeline (see the module doc)."""

    def __init__(
        self,
        step_s: int,
        *,
        warmup: int = 288,
        cooldown: int = 288,
        min_run: int = 6,
        run_factor: float = 2.0,
        range_margin: float = 1.0,
        bins: int = 8,
        memory_days: float = 3.0,
        known_days: float = 1.5,
        noise_k: float = 1.25,
        noise_h: float = 60.0,
        noise_cap: float = 4.0,
        checks: Iterable[str] = CHECKS,
    ) -> None:
        unknown = set(checks) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown reading checks {sorted(unknown)}: expected {CHECKS}")
        self.checks = frozenset(checks)
        self.step_s = step_s
        self.warmup = warmup
        self.cooldown = cooldown
        self.min_run = min_run
        self.run_factor = run_factor
        self.range_margin = range_margin
        self.bins = max(1, min(int(bins), DAY_S // step_s))
        per_bin_day = max(1.0, DAY_S / step_s / self.bins)
        self._profile_cap = per_bin_day * memory_days
        self._profile_known = per_bin_day * min(known_days, memory_days)
        self.noise_k = noise_k
        self.noise_h = noise_h
        self.noise_cap = noise_cap
        self._size = 0
        self._seen = np.zeros(0, dtype=np.int64)  # readings seen
        self._prev = np.zeros(0)  # the last two readings and their slots
        self._prev2 = np.zeros(0)
        self._slot = np.zeros(0, dtype=np.int64)
        self._slot2 = np.zeros(0, dtype=np.int64)
        self._run = np.zeros(0, dtype=np.int64)  # stuck: the current run of equal readings
        self._longest = np.zeros(0, dtype=np.int64)  # the longest run that did not fire
        self._stuck = np.zeros(0, dtype=bool)
        self._lo = np.zeros(0)  # range
        self._hi = np.zeros(0)
        self._range_at = np.zeros(0, dtype=np.int64)  # readings seen at the last firing
        self._noise_at = np.zeros(0, dtype=np.int64)
        self._cusum = np.zeros(0)  # noise
        self._profile_sum = np.zeros((0, self.bins))  # usual second difference per bin
        self._profile_n = np.zeros((0, self.bins))
        self._grow_to(64)

    def stuck(self, rows: IntArray) -> BoolArray:
        """Whether each row is stuck now (its forecasts are flagged)."""
        known = rows < self._size
        out = np.zeros(len(rows), dtype=bool)
        out[known] = self._stuck[rows[known]]
        return out

    def forget(self, rows: Iterable[int]) -> None:
        """The pipeline let these rows go: they will name other sensors."""
        rows = [r for r in rows if r < self._size]
        if rows:
            self._reset(np.asarray(rows, dtype=np.int64))

    def observe(self, rows: IntArray, slots: IntArray, values: FloatArray) -> list[Finding]:
        """Readings of distinct rows (one each); the checks that fired, in row order."""
        if not len(rows):
            return []
        self._grow_to(int(rows.max()) + 1)
        self._seen[rows] += 1
        warm = self._seen[rows] > self.warmup
        found: list[Finding] = []
        if STUCK in self.checks:
            found += self._check_stuck(rows, slots, values, warm)
        if RANGE in self.checks:
            found += self._check_range(rows, slots, values, warm)
        if NOISE in self.checks:
            found += self._check_noise(rows, slots, values, warm)
        self._prev2[rows], self._slot2[rows] = self._prev[rows], self._slot[rows]
        self._prev[rows], self._slot[rows] = values, slots
        found.sort(key=lambda f: (f.row, CHECKS.index(f.check)))
        return found

    def _check_stuck(
        self, rows: IntArray, slots: IntArray, values: FloatArray, warm: BoolArray
    ) -> list[Finding]:
        equal = values == self._prev[rows]
        ended = ~equal & ~self._stuck[rows]  # a run that did not fire: as long as runs may be
        self._longest[rows[ended]] = np.maximum(self._longest[rows[ended]], self._run[rows[ended]])
        run = np.where(equal, self._run[rows] + 1, 1)
        self._run[rows] = run
        self._stuck[rows] &= equal
        limit = np.maximum(self.min_run, np.ceil(self.run_factor * self._longest[rows]))
        fire = warm & (run >= limit) & ~self._stuck[rows]
        self._stuck[rows[fire]] = True
        return _findings(rows, slots, run.astype(np.float64), fire, STUCK)

    def _check_range(
        self, rows: IntArray, slots: IntArray, values: FloatArray, warm: BoolArray
    ) -> list[Finding]:
        lo, hi = self._lo[rows], self._hi[rows]
        span = hi - lo
        with np.errstate(invalid="ignore"):  # no range yet: inf - inf
            outside = np.maximum(lo - values, values - hi) / np.where(span > 0, span, np.inf)
        out = warm & (span > 0) & (outside > self.range_margin)
        fire = out & (self._seen[rows] - self._range_at[rows] > self.cooldown)
        self._range_at[rows[fire]] = self._seen[rows[fire]]
        learn = ~out
        self._lo[rows[learn]] = np.minimum(lo[learn], values[learn])
        self._hi[rows[learn]] = np.maximum(hi[learn], values[learn])
        return _findings(rows, slots, outside, fire, RANGE)

    def _check_noise(
        self, rows: IntArray, slots: IntArray, values: FloatArray, warm: BoolArray
    ) -> list[Finding]:
        line = (slots == self._slot[rows] + 1) & (slots == self._slot2[rows] + 2)
        size = np.abs(values - 2 * self._prev[rows] + self._prev2[rows])
        rows, slots, size, warm = rows[line], slots[line], size[line], warm[line]
        bins = ((slots * self.step_s) % DAY_S) * self.bins // DAY_S
        at = rows * self.bins + bins  # flat positions in the profiles: one gather each
        profile_sum, profile_n = self._profile_sum.reshape(-1), self._profile_n.reshape(-1)
        sums, counts = profile_sum[at], profile_n[at]
        usual = sums / np.maximum(counts, 1)
        known = counts >= self._profile_known
        z = np.minimum(size / np.where(usual > 0, usual, 1e-9), self.noise_cap)  # any units
        cusum = np.where(known, np.maximum(0.0, self._cusum[rows] + z - self.noise_k), 0.0)
        fire = warm & (cusum > self.noise_h)
        fire &= self._seen[rows] - self._noise_at[rows] > self.cooldown
        self._noise_at[rows[fire]] = self._seen[rows[fire]]
        level = cusum.copy()
        cusum[fire] = 0.0
        self._cusum[rows] = cusum
        # learn the usual size while nothing is suspected, forgetting over ``memory_days``
        learn = cusum < self.noise_h / 2
        keep = np.minimum(counts[learn], self._profile_cap - 1) / np.maximum(counts[learn], 1)
        profile_sum[at[learn]] = sums[learn] * keep + size[learn]
        profile_n[at[learn]] = counts[learn] * keep + 1
        return _findings(rows, slots, level, fire, NOISE)

    def _grow_to(self, size: int) -> None:
        if size <= self._size:
            return
        new = max(size, 2 * self._size)
        for name, fill in _FILLS.items():
            old = getattr(self, name)
            grown = np.full((new, *old.shape[1:]), fill, dtype=old.dtype)
            grown[: len(old)] = old
            setattr(self, name, grown)
        self._size = new

    def _reset(self, rows: IntArray) -> None:
        for name, fill in _FILLS.items():
            getattr(self, name)[rows] = fill


class ReadingSink:
    """The monitors of one pipeline, reporting to its retrain policy.

    ``sensor_of`` names a row, ``now`` is event time (epoch seconds); every finding becomes a
    ``Detection`` with its ``check`` (the policy quarantines a stuck sensor at once and lets the
    others join the drifting sensors of a retrain event) and is counted in
    ``stcast_reading_faults_total{check}``.
    """

    def __init__(
        self,
        monitors: ReadingMonitors,
        *,
        sensor_of: Callable[[int], str],
        now: Callable[[], float],
        policy: DetectionListener | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.monitors = monitors
        self.sensor_of = sensor_of
        self.now = now
        self.policy = policy
        self.metrics = metrics
        if metrics is not None:  # every check's series exists from the start
            for check in sorted(monitors.checks):
                metrics.reading_faults.labels(check=check)

    def observe(
        self, rows: IntArray, slots: IntArray, values: FloatArray, *, report: bool = True
    ) -> None:
        """Readings of distinct rows. ``report=False`` while a partition's state is rebuilt:
        the monitors learn, and what fired was reported by the previous owner."""
        found = self.monitors.observe(rows, slots, values)
        if not report:
            return
        for finding in found:
            if self.metrics is not None:
                self.metrics.reading_faults.labels(check=finding.check).inc()
            if self.policy is not None:
                sensor = self.sensor_of(finding.row)
                self.policy.update(
                    Detection(sensor, self.now(), float("nan"), finding.value, finding.check)
                )

    def forget(self, rows: Iterable[int]) -> None:
        self.monitors.forget(rows)


_NEVER = -(10**9)
_FILLS: dict[str, float] = {  # what a new row starts with
    "_seen": 0, "_prev": np.nan, "_prev2": np.nan, "_slot": -10, "_slot2": -10, "_run": 0,
    "_longest": 0, "_stuck": False, "_lo": np.inf, "_hi": -np.inf, "_range_at": _NEVER,
    "_noise_at": _NEVER, "_cusum": 0.0, "_profile_sum": 0.0, "_profile_n": 0.0,
}  # fmt: skip


def _findings(
    rows: IntArray, slots: IntArray, evidence: FloatArray, fire: BoolArray, check: str
) -> list[Finding]:
    at = np.flatnonzero(fire)
    return [Finding(int(rows[i]), check, int(slots[i]), float(evidence[i])) for i in at.tolist()]
