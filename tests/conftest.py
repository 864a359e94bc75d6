"""Shared fixtures: a real seed-LSTM ONNX model built by ``export/``; the embedded broker."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.onnx_graphs import build_seed_lstm
from stream_app.tools.broker import EmbeddedBroker

PEMS08_SENSORS = tuple(f"pems08/{i}" for i in range(170))


@pytest.fixture(scope="session")
def seed_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx + card.json of the seed LSTM for the 170 PEMS08 sensors (do not modify)."""
    return build_seed_lstm(
        tmp_path_factory.mktemp("seed-lstm"), sensors=PEMS08_SENSORS, mean=214.8, std=138.0
    )


@pytest.fixture
def model_copy(seed_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the seed model that a test may tamper with."""
    return Path(shutil.copytree(seed_model_dir, tmp_path / "model"))


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the session; each test makes its own topics."""
    with EmbeddedBroker() as running:
        yield running
