"""Error feedback: a drifting sensor's forecasts corrected by its own scored errors."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.core.feedback import ErrorFeedback
from stream_app.core.scoring import Scores


def scores(rows: list[int], horizons: list[int], errors: list[float]) -> Scores:
    ints = np.array(rows, dtype=np.int64)
    return Scores(ints, np.array(horizons, dtype=np.int64), np.array(errors), np.arange(len(rows)))


def test_a_steady_bias_is_cancelled_on_active_rows_only() -> None:
    feedback = ErrorFeedback(horizon=2, gain=0.5)
    feedback.activate(1)
    raw = np.array([[100.0, 100.0], [100.0, 100.0]])  # rows 0 and 1; actuals are 90
    for _ in range(40):  # step 2 learns at half the gain
        served = feedback.correct(np.array([0, 1]), raw)
        feedback.update(scores([0, 1, 1], [1, 1, 2], [*(served[:, 0] - 90), served[1, 1] - 90]))
    served = feedback.correct(np.array([0, 1]), raw)
    assert served[0].tolist() == [100.0, 100.0]  # never fired: the model's forecast
    np.testing.assert_allclose(served[1], [90.0, 90.0], atol=1e-4)
    assert feedback.active == 1


def test_a_swap_or_a_lost_row_ends_the_correction() -> None:
    feedback = ErrorFeedback(horizon=1, gain=0.5)
    for row in (0, 3):
        feedback.activate(row)
    feedback.update(scores([0, 3], [1, 1], [5.0, -2.0]))
    rows, raw = np.array([0, 3, 7]), np.zeros((3, 1))  # row 7 was never seen
    assert feedback.correct(rows, raw)[:, 0].tolist() == [-2.5, 1.0, 0.0]
    feedback.forget([3])
    assert feedback.correct(rows, raw)[:, 0].tolist() == [-2.5, 0.0, 0.0]
    feedback.reset()
    assert feedback.correct(rows, raw)[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert feedback.active == 0


def test_the_gain_must_be_a_share() -> None:
    for gain in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="gain"):
            ErrorFeedback(horizon=1, gain=gain)


def test_the_worker_wires_feedback_to_the_drift_monitors_only_when_asked() -> None:
    from prometheus_client import CollectorRegistry

    from stream_app.assembly import build_pipeline
    from stream_app.core.drift import DriftSink
    from stream_app.core.forecasters import Persistence
    from stream_app.core.metrics import Metrics
    from stream_app.settings import Settings

    def built(gain: float) -> tuple[ErrorFeedback | None, DriftSink]:
        pipeline = build_pipeline(
            Settings(drift_feedback_gain=gain), Persistence(12, 12), Metrics(CollectorRegistry())
        )
        sink = next(s for s in pipeline.sinks if isinstance(s, DriftSink))
        return pipeline.feedback, sink

    off, sink = built(0.0)
    assert off is None and sink.on_detection is None
    on, sink = built(0.3)
    assert on is not None and on.gain == 0.3 and sink.on_detection == on.activate
