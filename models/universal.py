"""The universal forecaster: one pre-trained model for any series at any grid step.

Inputs (the runtime's, see ``stream_app.core.contexts``):

- ``context`` (batch, C) float32: the sensor's last C readings, oldest first, NaN where missing
  or before its first reading (a sensor is forecast after a short warm-up: masked padding);
- ``step_s`` (batch, 1) float32: the grid step in seconds;
- ``calendar`` (batch, 3) float32: time of day and weekday of the forecast origin, and whether
  the calendar is real;
- ``neighbours`` (batch, C) float32: the graph-weighted neighbours' normalised context, NaN
  where there is none (no graph, or a sensor-keyed network).

Output ``quantiles`` (batch, Q, H) in the readings' units. Inside, the context is normalised
by its own mean and scale and the forecast de-normalised with them, so counts, speeds,
concentrations and power are all just series. The context is cut into patches; an LSTM reads
the patch tokens (each told the step and the time it ends at). A decoder, shared by the horizon
steps, reads the LSTM's state with what each step needs: the values one season and one week
before it (never after the origin), the average of every season before it in the context,
its own calendar and its index. Quantiles are kept ordered by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.nn import functional

from .universal_features import backtest, calendar_codes, normalise, seasonal_lags

INPUTS = ("context", "step_s", "calendar", "neighbours")
OUTPUT = "quantiles"


@dataclass(frozen=True)
class UniversalConfig:
    """The network's shape; everything needed to rebuild it from a checkpoint."""

    context: int = 288
    horizon: int = 12
    # Patches of 24 and these widths: 2.1 x the throughput of patch 12, hidden 128, d_model 96,
    # decoder 128 (23.6k against 11.5k windows/s, batch 256, one thread) and, at an equal
    # 300 s of pre-training, zero-shot PEMS08 MAE 23.64 against 24.40.
    patch: int = 24
    d_model: int = 64
    hidden: int = 96
    layers: int = 1
    decoder: int = 96
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    residual: bool = False  # the median is the last reading plus the decoder's change
    step_dropout: float = 0.0  # in training, this share of windows is not told the step (1: none)
    backtest: bool = True  # tell the decoder how persistence and the season did in the context
    # The median mixes the last reading and the decoder's by a learned gate. Pre-trained 300 s
    # without PEMS08, WIND, EU_WEATHER and LOS_LOOP, MAE / persistence's on those four: gate
    # 0.847, 1.232, 0.851, 1.006 (geometric mean 0.972); residual (last + change) 0.979;
    # neither 0.984. With neighbours each time; without them in training 0.87-1.19 worse.
    gate: bool = True
    # the interval's half-widths multiplied by this: 1 as pre-trained; fine-tuning sets it so
    # the validation part's 0.1-0.9 coverage is 80 % (a split-conformal widening)
    interval_scale: float = 1.0
    # network-specific: an embedding row per sensor (and one for a sensor it does not know)
    # read by the decoder; 0 as pre-trained, the network's sensors once fine-tuned for it
    sensors: int = 0
    sensor_dim: int = 16

    def __post_init__(self) -> None:
        if self.context % self.patch:
            raise ValueError(f"context {self.context} is not a multiple of patch {self.patch}")
        if len(self.quantiles) != 3 or self.quantiles[1] != 0.5:
            raise ValueError("quantiles must be (low, 0.5, high)")

    @property
    def tokens(self) -> int:
        return self.context // self.patch

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UniversalConfig:
        return cls(**{**raw, "quantiles": tuple(raw["quantiles"])})


class UniversalForecaster(nn.Module):
    """Patched LSTM encoder and a per-step decoder, on self-normalised contexts."""

    def __init__(self, config: UniversalConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.step_embedding = nn.Sequential(nn.Linear(1, 16), nn.GELU(), nn.Linear(16, 16))
        self.token = nn.Linear(4 * c.patch + 16 + 4, c.d_model)
        self.lstm = nn.LSTM(c.d_model, c.hidden, c.layers, batch_first=True)
        per_step = c.hidden + 6 + 4 + c.horizon + 16 + 1 + (3 if c.backtest else 0)
        if c.sensors:
            self.sensor_embedding = nn.Embedding(c.sensors + 1, c.sensor_dim)
            nn.init.normal_(self.sensor_embedding.weight, std=0.1)
            per_step += c.sensor_dim
        self.decoder = nn.Sequential(
            nn.Linear(per_step, c.decoder),
            nn.GELU(),
            nn.Linear(c.decoder, c.decoder),
            nn.GELU(),
            nn.Linear(c.decoder, 4 if c.gate else 3),
        )
        offsets = torch.arange(-(c.context - 1), 1, dtype=torch.float32)
        self.patch_ends: Tensor
        self.steps: Tensor
        self.horizon_code: Tensor
        self.register_buffer("patch_ends", offsets[c.patch - 1 :: c.patch].clone(), False)
        self.register_buffer("steps", torch.arange(1, c.horizon + 1, dtype=torch.float32), False)
        self.register_buffer("horizon_code", torch.eye(c.horizon), False)

    def forward(
        self,
        context: Tensor,
        step_s: Tensor,
        calendar: Tensor,
        neighbours: Tensor,
        sensor: Tensor | None = None,
    ) -> Tensor:
        z, seen, mean, scale = normalise(context)
        nb_seen = ~torch.isnan(neighbours)
        nb = torch.where(nb_seen, neighbours, torch.zeros_like(neighbours))
        step_code = self._step_code(step_s)  # (B, 16)
        state = self._encode(z, seen, nb, nb_seen, step_s, calendar, step_code)
        own = self.sensor_embedding(sensor) if self.config.sensors and sensor is not None else None
        out = self._decode(z, seen, state, step_s, calendar, step_code, own)  # (B, H, 3)
        low, mid, high = out[:, :, 0], out[:, :, 1], out[:, :, 2]
        if self.config.residual or self.config.gate:  # unclipped: persistence is exact
            last = torch.where(seen[:, -1:], (context[:, -1:] - mean) / scale, z[:, -1:])
            if self.config.gate:
                share = torch.sigmoid(out[:, :, 3])
                mid = share * last + (1 - share) * mid
            else:
                mid = mid + last
        spread = self.config.interval_scale
        q = torch.stack(
            [
                mid - spread * functional.softplus(low),
                mid,
                mid + spread * functional.softplus(high),
            ],
            dim=1,
        )  # (B, 3, H)
        return mean[:, :, None] + scale[:, :, None] * q

    def _step_code(self, step_s: Tensor) -> Tensor:
        code: Tensor = self.step_embedding(torch.log(step_s / 3600.0))
        p = self.config.step_dropout
        if p >= 1.0:
            return torch.zeros_like(code)
        if self.training and p > 0:
            keep = (torch.rand(code.shape[0], 1) >= p).to(code.dtype)
            code = code * keep
        return code

    def forward_normalised(
        self, context: Tensor, step_s: Tensor, calendar: Tensor, neighbours: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The quantiles in the context's own units (for the loss), with its mean and scale."""
        y = self.forward(context, step_s, calendar, neighbours)
        _, _, mean, scale = normalise(context)
        return (y - mean[:, :, None]) / scale[:, :, None], mean, scale

    def _encode(
        self,
        z: Tensor,
        seen: Tensor,
        nb: Tensor,
        nb_seen: Tensor,
        step_s: Tensor,
        calendar: Tensor,
        step_code: Tensor,
    ) -> Tensor:
        c = self.config
        batch = z.shape[0]
        parts = [z, seen.to(z.dtype), nb, nb_seen.to(z.dtype)]
        patches = torch.cat([p.reshape(batch, c.tokens, c.patch) for p in parts], dim=2)
        when = calendar_codes(calendar, step_s, self.patch_ends)  # (B, K, 4)
        steps = step_code[:, None, :].expand(batch, c.tokens, 16)
        tokens = self.token(torch.cat([patches, steps, when], dim=2))
        seq, _ = self.lstm(tokens)
        last: Tensor = seq[:, -1, :]
        return last

    def _decode(
        self,
        z: Tensor,
        seen: Tensor,
        state: Tensor,
        step_s: Tensor,
        calendar: Tensor,
        step_code: Tensor,
        own: Tensor | None = None,
    ) -> Tensor:
        c = self.config
        batch = z.shape[0]
        lags = seasonal_lags(z, seen, step_s, self.steps, c.context)  # (B, H, 6)
        when = calendar_codes(calendar, step_s, self.steps)  # (B, H, 4)
        last = z[:, -1:, None].expand(batch, c.horizon, 1)
        extra = [backtest(z, seen, step_s, c.horizon)] if c.backtest else []
        per_step = torch.cat(
            [
                *extra,
                state[:, None, :].expand(batch, c.horizon, c.hidden),
                lags,
                when,
                self.horizon_code[None].expand(batch, c.horizon, c.horizon),
                step_code[:, None, :].expand(batch, c.horizon, 16),
                last,
                *(
                    [own[:, None, :].expand(batch, c.horizon, c.sensor_dim)]
                    if own is not None
                    else []
                ),
            ],
            dim=2,
        )
        out: Tensor = self.decoder(per_step)
        return out


def pinball(pred: Tensor, target: Tensor, mask: Tensor, quantiles: tuple[float, ...]) -> Tensor:
    """Mean quantile loss of ``pred`` (B, Q, H) against ``target`` (B, H) where ``mask``."""
    levels = torch.tensor(quantiles, dtype=pred.dtype)[None, :, None]
    diff = target[:, None, :] - pred
    loss = torch.maximum(levels * diff, (levels - 1) * diff)
    weight = mask[:, None, :].to(pred.dtype)
    return (loss * weight).sum() / (weight.sum() * len(quantiles)).clamp(min=1.0) * len(quantiles)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_universal(model: UniversalForecaster, path: Path, training: dict[str, Any]) -> None:
    """The weights, the architecture and how they were made, for fine-tuning later."""
    torch.save(
        {
            "kind": "universal",
            "config": model.config.to_dict(),
            "state": model.state_dict(),
            "training": training,
        },
        path,
    )


def load_universal(path: Path) -> tuple[UniversalForecaster, dict[str, Any]]:
    """The model saved by ``save_universal`` (in eval mode) and its training record."""
    raw = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(raw, dict) or raw.get("kind") != "universal":
        raise ValueError(f"{path} is not a universal model's checkpoint")
    model = UniversalForecaster(UniversalConfig.from_dict(raw["config"]))
    model.load_state_dict(raw["state"])
    model.eval()
    training: dict[str, Any] = raw.get("training", {})
    return model, training


def with_interval_scale(model: UniversalForecaster, scale: float) -> UniversalForecaster:
    """The same weights, the interval's half-widths times ``scale``."""
    scaled = UniversalForecaster(replace(model.config, interval_scale=scale))  # same shape
    scaled.load_state_dict(model.state_dict())
    return scaled.eval()


def interval_scale_for(
    median: npt.NDArray[np.float64],
    low: npt.NDArray[np.float64],
    high: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    coverage: float = 0.8,
) -> float:
    """The factor on the half-widths that makes the interval cover ``coverage`` of the
    targets (NaN targets skipped): split-conformal calibration on held-out data."""
    seen = ~np.isnan(target)
    mid, y = median[seen], target[seen]
    below, above = (mid - low[seen]), (high[seen] - mid)
    lo, hi = 0.25, 4.0
    for _ in range(30):
        scale = (lo + hi) / 2
        inside = np.mean((y >= mid - scale * below) & (y <= mid + scale * above))
        lo, hi = (scale, hi) if inside < coverage else (lo, scale)
    return round((lo + hi) / 2, 4)


def for_sensors(model: UniversalForecaster, sensors: int) -> UniversalForecaster:
    """``model`` with an embedding row per sensor of a network, the same forecasts at first:
    the decoder's weights on the new inputs start at zero, the embedding small and random (so
    that both learn)."""
    if model.config.sensors == sensors:
        return model
    if model.config.sensors:
        raise ValueError(
            f"the model knows {model.config.sensors} sensors, the network has {sensors}"
        )
    extended = UniversalForecaster(replace(model.config, sensors=sensors))
    state = model.state_dict()
    first = "decoder.0.weight"
    grown = extended.state_dict()[first].clone()
    grown.zero_()
    grown[:, : state[first].shape[1]] = state[first]
    state[first] = grown
    state["sensor_embedding.weight"] = extended.sensor_embedding.weight.detach().clone()
    extended.load_state_dict(state)
    return extended
