"""Error feedback: a drifting sensor's forecasts mixed with its last reading, weighted by the
errors of each on that sensor."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.core.feedback import LEAN, ErrorFeedback
from stream_app.core.scoring import PendingForecasts, Scores


def scores(rows: list[int], horizons: list[int], model: list[float], last: list[float]) -> Scores:
    """Scores whose served errors are 0 and whose model and persistence errors are given."""
    n = len(rows)
    return Scores(
        np.array(rows, dtype=np.int64),
        np.array(horizons, dtype=np.int64),
        np.zeros(n),  # what was served: not what the feedback learns from
        np.arange(n),
        baseline=np.array(last),
        model_errors=np.array(model),
    )


def test_after_a_level_shift_an_active_row_leans_to_its_last_reading() -> None:
    feedback = ErrorFeedback(horizon=2, rate=0.5)
    feedback.activate(1)
    for _ in range(5):  # the model says 100 where 130 came; the last reading was 130
        feedback.update(scores([0, 0, 1, 1], [1, 2, 1, 2], [-30.0] * 4, [0.0] * 4))
    model, last = np.full((2, 2), 100.0), np.array([130.0, 130.0])
    served = feedback.correct(np.array([0, 1]), model, last)
    assert served[0].tolist() == [100.0, 100.0]  # never fired: the model's forecast
    assert served[1].tolist() == [130.0, 130.0]
    assert feedback.active == 1


def test_where_the_model_stays_the_better_it_keeps_most_of_the_weight_or_all() -> None:
    feedback = ErrorFeedback(horizon=2, rate=0.1)
    feedback.activate(0)
    for sign in (1.0, -1.0, 1.0):  # step 1: errors 5 and 8; step 2: 5 and 20
        feedback.update(scores([0, 0], [1, 2], [5.0 * sign] * 2, [8.0 * sign, 20.0 * sign]))
    # each average moved alike, so their ratio is the errors'
    weight = (5.0**2 - LEAN * 8.0**2) / (5.0**2 + 8.0**2)
    np.testing.assert_allclose(feedback.weights(np.array([0])), [[weight, 0.0]])
    served = feedback.correct(np.array([0]), np.array([[50.0, 50.0]]), np.array([70.0]))
    np.testing.assert_allclose(served, [[50.0 + weight * 20.0, 50.0]])  # 20 > 2 x 5: model


def test_scores_carry_the_models_own_errors_beside_the_served_ones() -> None:
    pending = PendingForecasts(horizon=1)
    ints = np.array([0, 1], dtype=np.int64)
    pending.add(ints, np.array([4, 4]), np.array([[9.0], [5.0]]), np.array([8.0, 3.0]),
                model=np.array([[7.0], [5.0]]))  # fmt: skip
    settled = pending.score(ints, np.array([5, 5]), np.array([10.0, 4.0]))
    assert settled.errors.tolist() == [-1.0, 1.0]
    assert settled.model_errors is not None and settled.model_errors.tolist() == [-3.0, 1.0]
    assert settled.baseline is not None and settled.baseline.tolist() == [-2.0, -1.0]
    merged = Scores.in_arrival_order([settled.at(np.array([1, 0]))])
    assert merged.model_errors is not None and merged.model_errors.tolist() == [1.0, -3.0]


def test_a_swap_a_lost_row_or_a_new_firing_starts_from_no_evidence() -> None:
    feedback = ErrorFeedback(horizon=1, rate=0.5)
    for row in (0, 3):
        feedback.activate(row)
    feedback.update(scores([0, 3], [1, 1], [10.0, 10.0], [0.0, 0.0]))
    rows = np.array([0, 3, 7])  # row 7 was never seen
    assert feedback.weights(rows)[:, 0].tolist() == [1.0, 1.0, 0.0]
    feedback.forget([3])
    assert feedback.weights(rows)[:, 0].tolist() == [1.0, 0.0, 0.0]
    feedback.activate(0)  # fired again
    assert feedback.weights(rows)[:, 0].tolist() == [0.0, 0.0, 0.0]
    feedback.update(scores([0], [1], [10.0], [0.0]))
    feedback.reset()
    assert feedback.weights(rows)[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert feedback.active == 0


def test_the_mix_ends_a_quiet_context_after_the_monitor_last_fired() -> None:
    """Counted in one-step-ahead actuals of the row (its other steps do not count); a new
    firing starts the count again; a row that never fired is untouched."""
    feedback = ErrorFeedback(horizon=2, rate=0.5, quiet_steps=3)
    assert feedback.quiet_steps == 3 and ErrorFeedback(2, 0.5).quiet_steps == 288
    feedback.activate(0)
    feedback.activate(1)
    rows = np.array([0, 1, 2])
    for _ in range(2):
        feedback.update(scores([0, 0, 1, 2], [1, 2, 2, 1], [10.0] * 4, [0.0] * 4))
    assert feedback.weights(rows)[:, 0].tolist() == [1.0, 0.0, 0.0]  # row 1: no step-1 error yet
    assert feedback.weights(rows)[:, 1].tolist() == [1.0, 1.0, 0.0]
    feedback.activate(0)  # fired again after two quiet steps: three more from now
    for _ in range(2):
        feedback.update(scores([0, 1], [1, 1], [10.0, 10.0], [0.0, 0.0]))
    assert feedback.active == 2
    feedback.update(scores([1], [1], [10.0], [0.0]))  # row 1's third
    assert feedback.active == 1
    assert feedback.weights(rows)[:, 0].tolist() == [1.0, 0.0, 0.0]
    feedback.update(scores([0], [1], [10.0], [0.0]))  # row 0's third since it fired again
    assert feedback.active == 0
    assert not feedback.weights(rows).any()


def test_the_rate_must_be_a_share() -> None:
    for rate in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="rate"):
            ErrorFeedback(horizon=1, rate=rate)


def test_the_worker_wires_feedback_to_the_drift_monitors_only_when_asked() -> None:
    from prometheus_client import CollectorRegistry

    from stream_app.assembly import build_pipeline
    from stream_app.core.drift import DriftSink
    from stream_app.core.forecasters import Persistence
    from stream_app.core.metrics import Metrics
    from stream_app.core.pipeline import Pipeline
    from stream_app.settings import Settings

    def built(gain: float) -> Pipeline:
        return build_pipeline(
            Settings(drift_feedback_gain=gain), Persistence(12, 12), Metrics(CollectorRegistry())
        )

    off = built(0.0)
    assert off.feedback is None
    on = built(0.3)
    assert on.feedback is not None and on.feedback.rate == 0.3
    sink = next(s for s in on.sinks if isinstance(s, DriftSink))
    assert sink.on_detection == on.drifted  # which activates the feedback
    on.reanchor = False
    on.drifted(5)
    assert on.feedback.active == 1 and not off.feedback
