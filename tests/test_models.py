"""The torch side: samples as the runtime builds them, masked losses, the fallback sensor row,
and a short training run whose export the runtime serves."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.onnx_graphs import build_seed_lstm  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.fitting import fit, within_budget  # noqa: E402
from models.losses import masked_loss, report  # noqa: E402
from models.lstm import GlobalLstm, LstmConfig, window_stats  # noqa: E402
from models.presets import DEFAULT_PRESET, PRESETS, get_preset  # noqa: E402
from models.samples import fit_normalization, make_samples, window_features  # noqa: E402
from models.training import train  # noqa: E402
from stream_app.core.card import FEATURES, ModelCard  # noqa: E402
from stream_app.core.forecasters import WindowBatch  # noqa: E402
from stream_app.core.onnx_forecaster import OnnxForecaster  # noqa: E402
from stream_app.offline.datasets import GridDataset  # noqa: E402
from stream_app.offline.protocols import split  # noqa: E402


def toy_dataset(n_steps: int = 400, n_sensors: int = 4, name: str = "toy") -> GridDataset:
    """A daily wave per sensor, with noise and a few zero readings, on a 5-minute grid."""
    rng = np.random.default_rng(1)
    t = np.arange(n_steps)[:, None]
    level = 100.0 + 20.0 * np.arange(n_sensors)
    values = level + 30.0 * np.sin(2 * np.pi * t / 288) + rng.normal(0.0, 3.0, (n_steps, n_sensors))
    values[rng.random(values.shape) < 0.02] = 0.0
    return GridDataset(
        name,
        values[:, :, None],
        datetime(2024, 3, 4, 7, 5, tzinfo=UTC),
        300,
        tuple(f"{name}/{i}" for i in range(n_sensors)),
        ("flow",),
    )


def test_sample_features_match_the_runtime(tmp_path: Path) -> None:
    data = toy_dataset()
    parts = split(data, "basicts")
    norm = fit_normalization(data, parts)
    samples = make_samples(data, parts, parts.val, norm, FEATURES)
    build_seed_lstm(tmp_path, sensors=data.sensors, mean=norm.mean, std=norm.std, hidden=4)
    runtime = OnnxForecaster(tmp_path, provider="cpu")
    ends = parts.sample_ends(parts.val)
    row, t, sensor = 7, int(ends[1]), 3  # the second sample end, fourth sensor
    assert samples.sensor[row] == sensor
    window = data.values[t - 11 : t + 1, sensor, 0][None, :]
    batch = WindowBatch(window, data.timestamps()[t : t + 1], (data.sensors[sensor],))
    np.testing.assert_array_equal(samples.x[row], runtime._features(batch)[0])
    np.testing.assert_array_equal(samples.target[row], data.values[t + 1 : t + 13, sensor, 0])


def test_day_of_week_counts_from_monday() -> None:
    monday_noon = int(datetime(2024, 3, 4, 12, tzinfo=UTC).timestamp())
    norm = fit_normalization(toy_dataset(), split(toy_dataset(), "basicts"))
    x = window_features(np.ones((1, 2)), np.array([monday_noon]), 86_400, norm, FEATURES)
    np.testing.assert_array_equal(x[0, :, 1], [0.5, 0.5])
    np.testing.assert_array_equal(x[0, :, 2], [6.0, 0.0])  # Sunday, then Monday


def test_normalization_uses_the_training_part_only() -> None:
    data = toy_dataset()
    parts = split(data, "basicts")
    changed = data.values.copy()
    changed[parts.val.start :] *= 10
    other = GridDataset(data.name, changed, data.start, 300, data.sensors, data.channels)
    assert fit_normalization(other, parts) == fit_normalization(data, parts)
    assert fit_normalization(data, parts).mean == pytest.approx(data.values[:280, :, 0].mean())


def test_windows_with_nan_are_skipped_and_zero_targets_masked() -> None:
    data = toy_dataset()
    parts = split(data, "basicts")
    norm = fit_normalization(data, parts)
    full = make_samples(data, parts, parts.train, norm, ("value",))
    data.values[100, 0, 0] = np.nan  # in 12 windows and 12 target spans of sensor 0
    holed = make_samples(data, parts, parts.train, norm, ("value",))
    assert len(full) - len(holed) == 24
    assert np.isfinite(holed.x).all() and np.isfinite(holed.target).all()
    np.testing.assert_array_equal(holed.mask, holed.target != 0)
    assert not holed.mask.all()
    assert make_samples(data, split(data, "tgcn"), parts.train, norm, ("value",)).mask.all()


def test_masked_loss_ignores_masked_targets() -> None:
    pred = torch.tensor([[1.0, 5.0], [2.0, 100.0]])
    y = torch.tensor([[0.0, 3.0], [2.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert masked_loss("mae", pred, y, mask).item() == pytest.approx((1 + 2 + 0) / 3)
    assert masked_loss("mse", pred, y, mask).item() == pytest.approx((1 + 4 + 0) / 3)
    assert masked_loss("huber", pred, y, mask).item() == pytest.approx((0.5 + 1.5 + 0) / 3)


def test_report_masks_basicts_and_pools_tgcn() -> None:
    data = toy_dataset()
    target = np.ones((2, 12))
    target[0, 0] = 0.0
    pred = np.zeros((2, 12))
    masked = report(split(data, "basicts"), 300, pred, target, target != 0)
    assert masked["H1_mae"] == 1.0 and masked["H12_mae"] == 1.0
    pooled = report(split(data, "tgcn"), 300, pred, target, np.ones_like(target, bool))
    assert pooled["15min_mae"] == pytest.approx(5 / 6)
    assert pooled["60min_rmse"] == pytest.approx(np.sqrt(23 / 24))


def test_window_stats() -> None:
    values = torch.tensor([[1.0, 2.0, 6.0]])
    stats = window_stats(values)[0].tolist()
    assert stats == pytest.approx([3.0, 14 / 3, np.sqrt(14 / 3 + 1e-6), 6.0, 1.0])


def test_unknown_sensor_uses_the_fallback_row() -> None:
    torch.manual_seed(0)
    model = GlobalLstm(LstmConfig(window=3, horizon=2, n_sensors=4, hidden=6)).eval()
    x = torch.randn(5, 3, 3)
    sensor = torch.tensor([0, 1, 2, 3, 4])
    before = model(x, sensor)
    with torch.no_grad():
        model.embedding.weight[4] += 1.0
    after = model(x, sensor)
    assert torch.equal(before[:4], after[:4])
    assert not torch.allclose(before[4], after[4])
    assert model.config.unknown_sensor == 4


def test_presets() -> None:
    seed = get_preset("seed")
    assert (seed.layers, seed.hidden, seed.loss, seed.residual) == (2, 50, "mse", False)
    assert seed.for_protocol("tgcn") is seed
    default = get_preset(DEFAULT_PRESET)
    assert default.for_protocol("basicts").loss == "mae"
    assert default.for_protocol("tgcn").loss == "huber"
    assert DEFAULT_PRESET in PRESETS
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_a_passed_deadline_stops_after_one_epoch() -> None:
    data = toy_dataset()
    parts = split(data, "basicts")
    norm = fit_normalization(data, parts)
    train_set, val_set = (
        make_samples(data, parts, p, norm, FEATURES) for p in (parts.train, parts.val)
    )
    model = GlobalLstm(TINY.lstm_config(12, 12, 4))
    fitted = fit(
        model, TINY.but(max_epochs=5), train_set, val_set, norm, deadline=0.0, progress=False
    )
    assert (len(fitted.history), fitted.best_epoch, fitted.stopped) == (1, 1, "time budget")


TINY = get_preset("seed").but(name="tiny", hidden=8, embedding_dim=2, max_epochs=2, fallback_p=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    result = train(toy_dataset(), "basicts", out, TINY, threads=1, progress=False, max_minutes=1)
    assert (result.epochs, result.preset, result.model.name) == (2, "tiny", "model.onnx")
    assert result.val_metrics["mae"] > 0
    return out


def test_trained_model_is_served_like_torch(trained: Path) -> None:
    forecaster = OnnxForecaster(trained, provider="cpu", step_s=300)
    checkpoint = load_checkpoint(trained / "checkpoint.pt")
    data = toy_dataset()
    windows = WindowBatch(
        data.values[300:312, :, 0].T.copy(),
        np.repeat(data.timestamps()[311], 4),
        ("toy/0", "toy/1", "toy/3", "toy/new"),
    )
    x = torch.from_numpy(forecaster._features(windows))
    with torch.no_grad():
        want = checkpoint.model(x, torch.tensor([0, 1, 3, 4])).numpy()
    norm = forecaster.card.normalization
    np.testing.assert_allclose(
        (forecaster.forecast(windows) - norm.mean) / norm.std, want, atol=1e-4
    )


def test_trained_card_and_checkpoint(trained: Path) -> None:
    card = ModelCard.load(trained)
    assert card.name == "toy-lstm" and card.unknown_sensor_index == 4
    assert card.training["preset"] == "tiny" and card.training["epochs"] == 2
    assert card.training["dataset"] == "toy" and card.training["protocol"] == "basicts"
    assert set(card.metrics["val"]) >= {"mae", "H3_mae", "H12_mae"}
    checkpoint = load_checkpoint(trained / "checkpoint.pt")
    assert checkpoint.normalization == card.normalization
    assert checkpoint.preset["hidden"] == 8


def test_only_fallback_training_moves_the_fallback_row(trained: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)  # what train() does before it builds the network
    initial = GlobalLstm(TINY.lstm_config(12, 12, 4)).embedding.weight.detach()
    never = TINY.but(fallback_p=0.0)
    train(toy_dataset(), "basicts", tmp_path, never, threads=1, progress=False, max_minutes=1)
    untouched = load_checkpoint(tmp_path / "checkpoint.pt").model.embedding.weight.detach()
    learned = load_checkpoint(trained / "checkpoint.pt").model.embedding.weight.detach()
    assert torch.equal(untouched[4], initial[4])
    assert not torch.allclose(learned[4], initial[4])


def test_training_is_repeatable(trained: Path, tmp_path: Path) -> None:
    train(toy_dataset(), "basicts", tmp_path, TINY, threads=1, progress=False, max_minutes=1)
    first = load_checkpoint(trained / "checkpoint.pt").model.state_dict()
    again = load_checkpoint(tmp_path / "checkpoint.pt").model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_an_epoch_bar_counts_the_epochs_the_time_budget_leaves_room_for() -> None:
    from tqdm import tqdm

    bar = tqdm(total=60, disable=True)
    now = time.monotonic()
    within_budget(bar, 2, 60.0, now + 330.0, 60)  # 5 more epochs of a minute fit in 5.5 min
    assert bar.total == 7
    within_budget(bar, 2, 1.0, now + 3600.0, 60)  # the budget is not what stops it
    assert bar.total == 60
    within_budget(bar, 9, 60.0, now - 5.0, 60)  # past the deadline: the epochs done
    assert bar.total == 9
