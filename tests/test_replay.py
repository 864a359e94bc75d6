"""Tick encoding of a real grid step: exact bytes, missing values, the network field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.tools.replay import encode_step, rfc3339


@pytest.fixture(scope="module")
def pems08() -> GridDataset:
    return load_dataset(bundled_dataset_path())


def test_single_ticks_of_step_1(pems08: GridDataset) -> None:
    messages = encode_step(pems08, 1, batched=False)
    assert len(messages) == 170
    assert messages[0] == (
        b"pems08/0",
        b'{"sensor":"pems08/0","ts":"2016-07-01T00:05:00Z","value":114.0}',
    )
    assert messages[169] == (
        b"pems08/169",
        b'{"sensor":"pems08/169","ts":"2016-07-01T00:05:00Z","value":4.0}',
    )
    values = [json.loads(v)["value"] for _, v in messages]
    assert values == pems08.values[1, :, 0].tolist()
    assert [k for k, _ in messages] == [s.encode() for s in pems08.sensors]


def test_batched_step_1_is_one_message_keyed_by_network(pems08: GridDataset) -> None:
    [(key, value)] = encode_step(pems08, 1, batched=True)
    assert key == b"pems08"
    assert value.startswith(
        b'{"ticks":[{"sensor":"pems08/0","ts":"2016-07-01T00:05:00Z","value":114.0},'
        b'{"sensor":"pems08/1","ts":"2016-07-01T00:05:00Z","value":185.0},'
    )
    ticks = json.loads(value)["ticks"]
    singles = [json.loads(v) for _, v in encode_step(pems08, 1, batched=False)]
    assert ticks == singles


def test_other_channel_and_timestamp(pems08: GridDataset) -> None:
    [(_, value)] = encode_step(pems08, 2, channel=2, batched=True)
    ticks = json.loads(value)["ticks"]
    assert {t["ts"] for t in ticks} == {"2016-07-01T00:10:00Z"}
    assert [t["value"] for t in ticks] == pems08.values[2, :, 2].tolist()
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_nan_becomes_null(pems08: GridDataset) -> None:
    values = pems08.values[:3].copy()
    values[1, 4, 0] = np.nan
    holed = dataclasses.replace(pems08, values=values)
    messages = encode_step(holed, 1, batched=False)
    assert messages[4][1] == b'{"sensor":"pems08/4","ts":"2016-07-01T00:05:00Z","value":null}'
    [(_, batch)] = encode_step(holed, 1, batched=True)
    assert json.loads(batch)["ticks"][4]["value"] is None


def test_network_field_and_batch_key(pems08: GridDataset) -> None:
    messages = encode_step(pems08, 1, batched=False, network="sb")
    assert messages[0][1] == (
        b'{"sensor":"pems08/0","ts":"2016-07-01T00:05:00Z","value":114.0,"network":"sb"}'
    )
    [(key, batch)] = encode_step(pems08, 1, batched=True, network="sb")
    assert key == b"sb"
    assert {t["network"] for t in json.loads(batch)["ticks"]} == {"sb"}
