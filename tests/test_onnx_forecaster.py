"""OnnxForecaster on a real seed-LSTM model: inference, contract checks, provider choice."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from stream_app.core import onnx_forecaster
from stream_app.core.card import CARD_FILE, MODEL_FILE, ModelContractError
from stream_app.core.forecasters import WindowBatch
from stream_app.core.onnx_forecaster import (
    OnnxForecaster,
    ProviderUnavailableError,
    choose_providers,
    cuda_device_count,
)

START = 1_467_331_200  # 2016-07-01T00:00:00Z, a Friday


def make_windows(n: int, seed: int = 0, window: int = 12, step_s: int = 300) -> WindowBatch:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 600.0, (n, window))
    last_ts = START + step_s * rng.integers(0, 10_000, n)
    sensors = tuple(f"pems08/{i}" for i in rng.integers(0, 170, n))
    return WindowBatch(values, last_ts.astype(np.int64), sensors)


@pytest.fixture(scope="module")
def forecaster(seed_model_dir: Path) -> OnnxForecaster:
    return OnnxForecaster(seed_model_dir, provider="cpu")


def edit_card(model_dir: Path, **changes: Any) -> None:
    path = model_dir / CARD_FILE
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def test_loads_with_the_cards_contract(forecaster: OnnxForecaster) -> None:
    assert (forecaster.window, forecaster.horizon) == (12, 12)
    assert forecaster.model_id == "seed-lstm@1" == forecaster.card.model_id
    assert forecaster.provider == "CPUExecutionProvider"


def test_forecast_shape_dtype_and_units(forecaster: OnnxForecaster) -> None:
    out = forecaster.forecast(make_windows(64))
    assert out.shape == (64, 12)
    assert out.dtype == np.float64
    assert np.isfinite(out).all()
    # A tanh-bounded LSTM with a small head stays within a few std of the mean.
    assert np.abs(out - 214.8).max() < 10 * 138.0


def test_same_window_twice_gives_the_same_forecast(forecaster: OnnxForecaster) -> None:
    batch = make_windows(8)
    np.testing.assert_array_equal(forecaster.forecast(batch), forecaster.forecast(batch))


def test_batch_of_one_matches_its_row_in_a_batch_of_64(forecaster: OnnxForecaster) -> None:
    batch = make_windows(64, seed=1)
    full = forecaster.forecast(batch)
    for row in (0, 17, 63):
        one = WindowBatch(
            batch.values[row : row + 1], batch.last_ts[row : row + 1], batch.sensors[row : row + 1]
        )
        np.testing.assert_allclose(forecaster.forecast(one)[0], full[row], rtol=1e-5, atol=1e-5)


def test_every_input_feature_matters(forecaster: OnnxForecaster) -> None:
    batch = make_windows(4)
    base = forecaster.forecast(batch)
    shifted_time = WindowBatch(batch.values, batch.last_ts + 3 * 3600, batch.sensors)
    shifted_day = WindowBatch(batch.values, batch.last_ts + 86_400, batch.sensors)
    other_sensor = WindowBatch(batch.values, batch.last_ts, ("pems08/99",) * 4)
    for changed in (shifted_time, shifted_day, other_sensor):
        assert not np.allclose(forecaster.forecast(changed), base)


def test_unknown_sensor_uses_the_fallback_row(forecaster: OnnxForecaster) -> None:
    batch = make_windows(3)
    unknown = WindowBatch(batch.values, batch.last_ts, ("nowhere/1", "nowhere/2", "pems08/5"))
    out = forecaster.forecast(unknown)
    assert np.isfinite(out).all()
    # Two unknown sensors share one embedding row: same window, same forecast.
    same = WindowBatch(batch.values[[0, 0]], batch.last_ts[[0, 0]], ("nowhere/1", "nowhere/2"))
    first, second = forecaster.forecast(same)
    np.testing.assert_array_equal(first, second)


def test_empty_batch(forecaster: OnnxForecaster) -> None:
    empty = WindowBatch(np.empty((0, 12)), np.empty(0, dtype=np.int64), ())
    assert forecaster.forecast(empty).shape == (0, 12)


def test_prepare_fixes_the_inputs_when_called_and_runs_later(
    forecaster: OnnxForecaster,
) -> None:
    """The pipeline builds a chunk's inputs on its own thread and runs the model on another:
    what the prepared call runs on is the windows as they were when it was prepared."""
    windows = make_windows(8, seed=3)
    expected = forecaster.forecast(windows)
    run = forecaster.prepare(windows)
    windows.values[:] = 0.0  # the caller may reuse its arrays once prepared
    np.testing.assert_array_equal(run(), expected)
    assert not np.allclose(forecaster.forecast(windows), expected)


def test_prepare_refuses_a_wrong_window_before_any_run(forecaster: OnnxForecaster) -> None:
    with pytest.raises(ValueError, match=r"expected \(2, 12\)"):
        forecaster.prepare(make_windows(2, window=24))


def test_wrong_window_length_is_refused(forecaster: OnnxForecaster) -> None:
    with pytest.raises(ValueError, match=r"expected \(2, 12\)"):
        forecaster.forecast(make_windows(2, window=24))


def test_tampered_model_bytes_are_refused(model_copy: Path) -> None:
    with (model_copy / MODEL_FILE).open("ab") as model:
        model.write(b"\0")
    with pytest.raises(ModelContractError, match="sha256"):
        OnnxForecaster(model_copy, provider="cpu")


def test_missing_model_file(model_copy: Path) -> None:
    (model_copy / MODEL_FILE).unlink()
    with pytest.raises(ModelContractError, match=f"no {MODEL_FILE} beside the card"):
        OnnxForecaster(model_copy, provider="cpu")


def test_configured_step_must_match_the_card(model_copy: Path) -> None:
    with pytest.raises(ModelContractError, match=r"step_s=300 .* STCAST_STEP_S=900: set"):
        OnnxForecaster(model_copy, provider="cpu", step_s=900)
    assert OnnxForecaster(model_copy, provider="cpu", step_s=300).card.step_s == 300


def test_card_window_that_the_model_does_not_have(model_copy: Path) -> None:
    # A consistent card for a 24-step model, beside a 12-step model.
    card = json.loads((model_copy / CARD_FILE).read_text())
    card["inputs"][0]["shape"] = ["batch", 24, 3]
    edit_card(model_copy, window=24, inputs=card["inputs"])
    with pytest.raises(ModelContractError, match=r"input 'x' is float32\['batch', 24, 3\]"):
        OnnxForecaster(model_copy, provider="cpu")


def test_card_features_that_the_model_does_not_have(model_copy: Path) -> None:
    card = json.loads((model_copy / CARD_FILE).read_text())
    card["inputs"][0]["shape"] = ["batch", 12, 2]
    edit_card(model_copy, features=["value", "time_of_day"], inputs=card["inputs"])
    with pytest.raises(ModelContractError, match="features must match"):
        OnnxForecaster(model_copy, provider="cpu")


def test_card_io_names_that_the_model_does_not_have(model_copy: Path) -> None:
    card = json.loads((model_copy / CARD_FILE).read_text())
    card["outputs"][0]["name"] = "forecast"
    edit_card(model_copy, output="forecast", outputs=card["outputs"])
    with pytest.raises(ModelContractError, match=r"outputs \['forecast'\] but model.onnx has"):
        OnnxForecaster(model_copy, provider="cpu")


def test_unloadable_model_is_a_contract_error(model_copy: Path) -> None:
    (model_copy / MODEL_FILE).write_bytes(b"not a model")
    edit_card(model_copy, onnx_sha256=hashlib.sha256(b"not a model").hexdigest())
    with pytest.raises(ModelContractError, match="onnxruntime cannot load"):
        OnnxForecaster(model_copy, provider="cpu")


def test_auto_is_cpu_here_and_silent(
    seed_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    if cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    onnx_forecaster.cuda_problem.cache_clear()  # probe again, inside capfd
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    assert OnnxForecaster(seed_model_dir, provider="auto").provider == "CPUExecutionProvider"
    assert capfd.readouterr().err == ""


def test_cuda_without_a_device_is_a_clear_error(seed_model_dir: Path) -> None:
    if cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ProviderUnavailableError, match=r"STCAST_PROVIDER=cuda but .*set STCAST_"):
        OnnxForecaster(seed_model_dir, provider="cuda")


def test_unknown_provider_preference() -> None:
    with pytest.raises(ValueError, match="STCAST_PROVIDER='tpu'"):
        choose_providers("tpu")
    assert choose_providers("cpu") == ["CPUExecutionProvider"]


@pytest.fixture
def driver_without_cuda_libraries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend a driver reports a GPU, so the probe session really asks onnxruntime for CUDA."""
    if "CUDAExecutionProvider" not in ort.get_available_providers() or cuda_device_count() > 0:
        pytest.skip("needs onnxruntime-gpu on a machine without a usable GPU")
    monkeypatch.setattr(onnx_forecaster, "cuda_device_count", lambda: 1)
    onnx_forecaster.cuda_problem.cache_clear()
    yield
    onnx_forecaster.cuda_problem.cache_clear()


@pytest.mark.usefixtures("driver_without_cuda_libraries")
def test_failed_cuda_probe_is_silent_and_explained(capfd: pytest.CaptureFixture[str]) -> None:
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailableError, match="could not start CUDA"):
        choose_providers("cuda")
    assert capfd.readouterr().err == ""
