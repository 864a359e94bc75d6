"""One global LSTM for every sensor of a network, told apart by a learned sensor embedding.

Inputs are the runtime's: ``x`` (batch, window, features) and ``sensor`` (batch,) int64; the
output is the whole horizon at once, in normalised units. Anything else the network uses
(window statistics, cyclic time codes) is computed from ``x`` inside the module, so it becomes
part of the ONNX graph and the serving contract stays the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stream_app.core.card import FEATURES

N_STATS = 5  # mean, variance, std, max, min of the window's values


@dataclass(frozen=True)
class LstmConfig:
    """The network's shape; everything needed to rebuild it from a checkpoint."""

    window: int
    horizon: int
    n_sensors: int  # the embedding has one more row, the fallback for unseen sensors
    features: tuple[str, ...] = FEATURES
    hidden: int = 50
    layers: int = 2
    embedding_dim: int = 8
    dropout: float = 0.0
    window_stats: bool = False  # feed the head the window's mean, variance, std, max, min
    residual: bool = False  # forecast the change from the window's last value
    cyclic_time: bool = False  # time of day as sin/cos, day of week one-hot

    def __post_init__(self) -> None:
        needs_value = self.window_stats or self.residual
        if needs_value and "value" not in self.features:
            raise ValueError("window_stats and residual need the 'value' feature")

    @property
    def unknown_sensor(self) -> int:
        """The embedding row of sensors not seen in training."""
        return self.n_sensors


class GlobalLstm(nn.Module):
    """Sensor embedding on every step, stacked LSTM, linear head to the whole horizon."""

    def __init__(self, config: LstmConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.n_sensors + 1, config.embedding_dim)
        self.lstm = nn.LSTM(
            _step_width(config),
            config.hidden,
            config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        extra = N_STATS if config.window_stats else 0
        self.head = nn.Linear(config.hidden + extra, config.horizon)
        self._value = config.features.index("value") if "value" in config.features else -1

    def forward(self, x: Tensor, sensor: Tensor) -> Tensor:
        """Forecasts (batch, horizon) in normalised units."""
        emb = self.embedding(sensor)
        steps = emb.unsqueeze(1).expand(-1, self.config.window, -1)
        seq, _ = self.lstm(torch.cat([self._encode(x), steps], dim=2))
        state = self.dropout(seq[:, -1, :])
        if self.config.window_stats:
            state = torch.cat([state, window_stats(x[:, :, self._value])], dim=1)
        y: Tensor = self.head(state)
        if self.config.residual:
            y = y + x[:, -1, self._value].unsqueeze(1)
        return y

    def _encode(self, x: Tensor) -> Tensor:
        if not self.config.cyclic_time:
            return x
        cols: list[Tensor] = []
        for i, name in enumerate(self.config.features):
            cols.extend(_cyclic(name, x[:, :, i]))
        return torch.stack(cols, dim=2)


def window_stats(values: Tensor) -> Tensor:
    """Mean, variance, std, max and min of each window (batch, window) -> (batch, 5)."""
    mean = values.mean(dim=1, keepdim=True)
    var = ((values - mean) ** 2).mean(dim=1, keepdim=True)
    std = torch.sqrt(var + 1e-6)  # the epsilon keeps the gradient finite on flat windows
    high = values.amax(dim=1, keepdim=True)
    low = values.amin(dim=1, keepdim=True)
    return torch.cat([mean, var, std, high, low], dim=1)


def _cyclic(name: str, col: Tensor) -> list[Tensor]:
    if name == "time_of_day":
        angle = col * (2 * math.pi)
        return [torch.sin(angle), torch.cos(angle)]
    if name == "day_of_week":
        return [(col == float(day)).to(col.dtype) for day in range(7)]
    return [col]


def _step_width(config: LstmConfig) -> int:
    if not config.cyclic_time:
        width = len(config.features)
    else:
        widths = {"value": 1, "time_of_day": 2, "day_of_week": 7}
        width = sum(widths[f] for f in config.features)
    return width + config.embedding_dim
