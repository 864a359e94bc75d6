"""ModelCard: round trip, sensor lookup, and a clear error for every class of bad card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_app.core.card import CARD_FILE, ModelCard, ModelContractError

REQUIRED_KEYS = (
    "name",
    "version",
    "created_at",
    "onnx_sha256",
    "opset",
    "window",
    "horizon",
    "step_s",
    "features",
    "inputs",
    "outputs",
    "value_input",
    "sensor_input",
    "output",
    "normalization",
    "sensors",
    "unknown_sensor_index",
    "training",
    "metrics",
    "libraries",
)


@pytest.fixture
def raw_card(seed_model_dir: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((seed_model_dir / CARD_FILE).read_text())
    return card


def load_raw(raw: Any, tmp_path: Path) -> ModelCard:
    path = tmp_path / CARD_FILE
    path.write_text(json.dumps(raw))
    return ModelCard.load(path)


def test_seed_card_describes_the_model(seed_model_dir: Path) -> None:
    card = ModelCard.load(seed_model_dir)
    assert card.model_id == "seed-lstm@1"
    assert (card.window, card.horizon, card.step_s, card.opset) == (12, 12, 300, 17)
    assert card.features == ("value", "time_of_day", "day_of_week")
    assert card.sensors == tuple(f"pems08/{i}" for i in range(170))
    assert card.unknown_sensor_index == 170
    assert card.normalization.mean == 214.8 and card.normalization.std == 138.0
    assert set(card.libraries) >= {"onnx", "numpy"}


def test_round_trip(seed_model_dir: Path, tmp_path: Path) -> None:
    card = ModelCard.load(seed_model_dir)
    card.save(tmp_path)
    again = ModelCard.load(tmp_path / CARD_FILE)
    assert again == card
    assert again.to_dict() == json.loads((seed_model_dir / CARD_FILE).read_text())


def test_sensor_indices_fall_back_for_unknown_sensors(seed_model_dir: Path) -> None:
    card = ModelCard.load(seed_model_dir)
    got = card.sensor_indices(["pems08/0", "pems08/169", "elsewhere/1", "pems08/7"])
    assert got.dtype == np.int64
    assert got.tolist() == [0, 169, 170, 7]
    assert card.sensor_indices([]).shape == (0,)


def test_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match=r"no model card at .*STCAST_MODEL_DIR"):
        ModelCard.load(tmp_path / CARD_FILE)


def test_bad_json(tmp_path: Path) -> None:
    (tmp_path / CARD_FILE).write_text('{"name": ')
    with pytest.raises(ModelContractError, match="not valid JSON"):
        ModelCard.load(tmp_path)


def test_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match="must be a JSON object"):
        load_raw([1, 2], tmp_path)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_key_is_named(raw_card: dict[str, Any], tmp_path: Path, key: str) -> None:
    del raw_card[key]
    with pytest.raises(ModelContractError, match=f"lacks the key '{key}'"):
        load_raw(raw_card, tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", 3),
        ("window", "12"),
        ("window", 12.0),
        ("window", True),
        ("horizon", None),
        ("step_s", [300]),
        ("features", "value"),
        ("features", ["value", 1]),
        ("sensors", {"pems08/0": 0}),
        ("sensor_input", 0),
        ("inputs", {"x": 1}),
        ("normalization", [0.0, 1.0]),
        ("training", "none"),
    ],
)
def test_ill_typed_key_is_named(
    raw_card: dict[str, Any], tmp_path: Path, key: str, value: Any
) -> None:
    raw_card[key] = value
    with pytest.raises(ModelContractError, match=f"key '{key}' must be"):
        load_raw(raw_card, tmp_path)


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda c: c.update(features=["value", "temperature", "day_of_week"]), "features"),
        (lambda c: c.update(features=["value", "value", "day_of_week"]), "features"),
        (lambda c: c.update(window=0), "window"),
        (lambda c: c.update(step_s=-300), "step_s"),
        (lambda c: c.update(onnx_sha256="abc"), "onnx_sha256"),
        (lambda c: c.update(created_at="yesterday"), "created_at"),
        (lambda c: c.update(created_at="2024-05-01T12:00:00"), "created_at"),
        (lambda c: c.update(unknown_sensor_index=-1), "unknown_sensor_index"),
        (lambda c: c.update(sensors=["a", "a"]), "sensors"),
        (lambda c: c.update(value_input="values"), "value_input"),
        (lambda c: c.update(output="forecast"), "output"),
        (lambda c: c.update(sensor_input="x"), "sensor_input"),
        (lambda c: c.update(window=24), "value_input"),
        (lambda c: c.update(horizon=6), "output"),
        (lambda c: c["inputs"][0].update(dtype="float64"), "value_input"),
        (lambda c: c["inputs"][0].update(shape=["batch", 12, "f"]), "inputs[0].shape"),
        (lambda c: c["outputs"][0].pop("dtype"), "dtype"),
        (lambda c: c["normalization"].update(method="minmax"), "normalization.method"),
        (lambda c: c["normalization"].update(std=0.0), "std=0.0"),
        (lambda c: c["normalization"].pop("mean"), "mean"),
    ],
)
def test_meaningless_card_is_refused(
    raw_card: dict[str, Any], tmp_path: Path, mutate: Any, key: str
) -> None:
    mutate(raw_card)
    with pytest.raises(ModelContractError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_raw(raw_card, tmp_path)


def test_sensorless_model_card(raw_card: dict[str, Any], tmp_path: Path) -> None:
    raw_card["sensor_input"] = None
    with pytest.raises(ModelContractError, match=r"\['sensor'\] that the runtime cannot feed"):
        load_raw(raw_card, tmp_path)
    raw_card["inputs"] = raw_card["inputs"][:1]
    assert load_raw(raw_card, tmp_path).sensor_input is None


def test_every_message_says_what_to_change(raw_card: dict[str, Any], tmp_path: Path) -> None:
    raw_card["opset"] = "17"
    with pytest.raises(ModelContractError, match="fix the card or re-export it"):
        load_raw(raw_card, tmp_path)
