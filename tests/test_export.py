"""torch -> ONNX export: parity with torch, a dynamic batch, the card, and refusal when broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from export import torch_export  # noqa: E402
from export.torch_export import ExportSpec, ParityError, export_model, parity_batch  # noqa: E402
from models.lstm import GlobalLstm, LstmConfig  # noqa: E402
from stream_app.core.card import CARD_FILE, MODEL_FILE, ModelCard  # noqa: E402
from stream_app.core.forecasters import WindowBatch  # noqa: E402
from stream_app.core.onnx_forecaster import OnnxForecaster  # noqa: E402

SENSORS = tuple(f"toy/{i}" for i in range(5))
FEATURES = ("value", "time_of_day", "day_of_week")


def tiny_model(**changes: object) -> GlobalLstm:
    torch.manual_seed(3)
    settings: dict[str, object] = {
        "window": 4,
        "horizon": 3,
        "n_sensors": len(SENSORS),
        "features": FEATURES,
        "hidden": 8,
        "embedding_dim": 3,
        "window_stats": True,
        "residual": True,
        "cyclic_time": True,
    }
    settings.update(changes)
    return GlobalLstm(LstmConfig(**settings)).eval()  # type: ignore[arg-type]


def spec_for(model: GlobalLstm) -> ExportSpec:
    return ExportSpec(
        name="toy-lstm",
        version="7",
        window=model.config.window,
        horizon=model.config.horizon,
        step_s=300,
        features=model.config.features,
        sensors=SENSORS,
        mean=50.0,
        std=10.0,
        training={"epochs": 0},
        metrics={"val": {"mae": 1.5}},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[GlobalLstm, Path]:
    model = tiny_model()
    out = tmp_path_factory.mktemp("exported")
    export_model(model, out, spec_for(model))
    return model, out


def test_card_describes_the_export(exported: tuple[GlobalLstm, Path]) -> None:
    card = ModelCard.load(exported[1])
    assert (card.name, card.version, card.window, card.horizon) == ("toy-lstm", "7", 4, 3)
    assert card.opset == 17
    assert card.sensors == SENSORS and card.unknown_sensor_index == 5
    assert [(s.name, s.shape) for s in card.inputs] == [
        ("x", ("batch", 4, 3)),
        ("sensor", ("batch",)),
    ]
    assert card.outputs[0].shape == ("batch", 3)
    assert card.libraries["torch"] == torch.__version__
    assert card.metrics == {"val": {"mae": 1.5}}
    assert not list(exported[1].glob("*.partial"))


@pytest.mark.parametrize("size", [1, 300])
def test_dynamic_batch_matches_torch(exported: tuple[GlobalLstm, Path], size: int) -> None:
    model, out = exported
    session = ort.InferenceSession(str(out / MODEL_FILE), providers=["CPUExecutionProvider"])
    x, sensor = parity_batch(spec_for(model), size, seed=11)
    (got,) = session.run(["y"], {"x": x, "sensor": sensor})
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(sensor)).numpy()
    assert got.shape == (size, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_runtime_forecasts_match_torch(exported: tuple[GlobalLstm, Path]) -> None:
    model, out = exported
    forecaster = OnnxForecaster(out, provider="cpu")
    rng = np.random.default_rng(0)
    windows = WindowBatch(
        rng.normal(50.0, 10.0, (6, 4)),
        1_700_000_000 + 300 * rng.integers(0, 10_000, 6),
        (*SENSORS[:5], "toy/never-seen"),
    )
    x = forecaster._features(windows)
    sensor = np.array([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(sensor)).numpy()
    got = (forecaster.forecast(windows) - 50.0) / 10.0
    np.testing.assert_allclose(got, want, atol=1e-4)


def _tamper_after_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX file keeps the old weights while the module moves on: parity must catch it."""
    write = torch_export.write_onnx

    def write_then_tamper(module: torch.nn.Module, *args: object, **kwargs: object) -> None:
        write(module, *args, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            module.head.bias.add_(1e-3)  # type: ignore[union-attr, operator]

    monkeypatch.setattr(torch_export, "write_onnx", write_then_tamper)


def test_broken_export_raises_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, exported: tuple[GlobalLstm, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    out.mkdir()
    for name in (MODEL_FILE, CARD_FILE):  # an older pair that must not outlive the failure
        (out / name).write_bytes((exported[1] / name).read_bytes())
    _tamper_after_writing(monkeypatch)
    model = tiny_model()
    with pytest.raises(ParityError, match="differ by"):
        export_model(model, out, spec_for(model))
    assert list(out.iterdir()) == []


def test_parity_tolerance_is_what_decides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _tamper_after_writing(monkeypatch)
    model = tiny_model()
    card = export_model(model, tmp_path, spec_for(model), tolerance=1e-2)
    assert card.window == 4  # a 1e-3 shift passes a 1e-2 tolerance


def test_plain_lstm_without_extras_exports(tmp_path: Path) -> None:
    model = tiny_model(window_stats=False, residual=False, cyclic_time=False, layers=1)
    export_model(model, tmp_path, spec_for(model))
    assert OnnxForecaster(tmp_path, provider="cpu").horizon == 3
