"""What the universal model computes from its inputs inside the graph (so ONNX carries it).

The context's own normalisation (``stream_app.core.contexts``'s formula), the season that fits
the step, the values a season and a week before each horizon step (never after the origin), the
context's backtest of persistence and of the season, and the calendar of any step from the
origin's. All plain tensor arithmetic that exports to ONNX. Masks are counted as floats (exact
up to 2**24): onnxruntime sums int64 without vector instructions, and 15 such counts took a
fifth of the bundled model's time at batch 256.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stream_app.core.contexts import SCALE_EPS, SCALE_FLOOR, Z_CLIP

DAY_S, WEEK_S, YEAR_S = 86_400.0, 604_800.0, 365.0 * 86_400.0
MAX_SEASONS = 14  # seasons back averaged by the decoder (two weeks of days)


def normalise(context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """z, the seen mask, mean (B, 1) and scale (B, 1): ``stream_app.core.contexts``'s formula."""
    seen = ~torch.isnan(context)
    x = torch.where(seen, context, torch.zeros_like(context))
    count = seen.to(context.dtype).sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = x.sum(dim=1, keepdim=True) / count
    centred = torch.where(seen, x - mean, torch.zeros_like(x))
    std = torch.sqrt((centred**2).sum(dim=1, keepdim=True) / count)
    level = x.abs().sum(dim=1, keepdim=True) / count
    scale = std + SCALE_FLOOR * level
    scale = torch.where(scale > 0, scale, torch.full_like(scale, SCALE_EPS))
    z = torch.clamp(centred / scale, -Z_CLIP, Z_CLIP)
    return z, seen, mean, scale


def season_steps(step_s: Tensor) -> Tensor:
    """One season in grid steps: a day below a day's step, a week below a week's, else a year
    (``stream_app.core.forecasters.season_steps``)."""
    period = torch.where(
        step_s < DAY_S,
        torch.full_like(step_s, DAY_S),
        torch.where(
            step_s < WEEK_S, torch.full_like(step_s, WEEK_S), torch.full_like(step_s, YEAR_S)
        ),
    )
    return torch.clamp(torch.round(period / step_s), min=1.0)


def seasonal_lags(z: Tensor, seen: Tensor, step_s: Tensor, steps: Tensor, context: int) -> Tensor:
    """Per horizon step: the value one season before it and one week before it (sub-daily
    steps), never after the origin, and the mean of every season before it in the context;
    each with a mask. (B, H, 6)."""
    season = season_steps(step_s)  # (B, 1)
    week = torch.where(step_s < DAY_S, torch.round(WEEK_S / step_s), torch.zeros_like(step_s))
    one, one_seen = lag(z, seen, season, steps, context)
    weekly, weekly_seen = lag(z, seen, week, steps, context)
    total = torch.zeros_like(one)
    count = torch.zeros_like(one)
    for k in range(1, context + 1):  # unrolled only as far as a season of 1 step could go
        if k > MAX_SEASONS:
            break
        value, present = lag(z, seen, season * k, steps, context, exact=True)
        total = total + value
        count = count + present
    average = total / count.clamp(min=1.0)
    has_average = (count > 0).to(z.dtype)
    return torch.stack([one, one_seen, weekly, weekly_seen, average, has_average], dim=2)


def backtest(z: Tensor, seen: Tensor, step_s: Tensor, horizon: int) -> Tensor:
    """How persistence at each lead h and the seasonal value did inside the context: the mean
    absolute change over h steps, over one season, and whether the season fits. (B, H, 3)."""
    errors = []
    for h in range(1, horizon + 1):
        both = seen[:, h:] & seen[:, :-h]
        change = torch.where(both, (z[:, h:] - z[:, :-h]).abs(), torch.zeros_like(z[:, h:]))
        errors.append(change.sum(dim=1) / both.to(z.dtype).sum(dim=1).clamp(min=1.0))
    persistence = torch.stack(errors, dim=1)  # (B, H)
    context = z.shape[1]
    season = season_steps(step_s)  # (B, 1)
    earlier = torch.arange(context, dtype=z.dtype)[None, :] - season  # (B, C)
    valid = earlier >= 0
    index = torch.clamp(earlier, min=0).to(torch.int64)
    both = valid & seen & torch.gather(seen, 1, index)
    change = torch.where(both, (z - torch.gather(z, 1, index)).abs(), torch.zeros_like(z))
    count = both.to(z.dtype).sum(dim=1, keepdim=True)
    seasonal = change.sum(dim=1, keepdim=True) / count.clamp(min=1.0)
    has = (count > 0).to(z.dtype)
    b, h = persistence.shape
    return torch.stack([persistence, seasonal.expand(b, h), has.expand(b, h)], dim=2)


def lag(
    z: Tensor, seen: Tensor, period: Tensor, steps: Tensor, context: int, exact: bool = False
) -> tuple[Tensor, Tensor]:
    """The value ``period`` (B, 1) steps before each horizon step (whole periods back until
    at or before the origin unless ``exact``), and whether it is a reading in the context."""
    safe = torch.clamp(period, min=1.0)
    back = safe if exact else safe * torch.ceil(steps[None, :] / safe)  # (B, H)
    position = (context - 1) + steps[None, :] - back
    valid = (period > 0) & (position >= 0) & (position <= context - 1)
    index = torch.clamp(position, 0, context - 1).to(torch.int64)
    value = torch.gather(z, 1, index)
    present = valid & torch.gather(seen, 1, index)
    return torch.where(present, value, torch.zeros_like(value)), present.to(z.dtype)


def calendar_codes(calendar: Tensor, step_s: Tensor, offsets: Tensor) -> Tensor:
    """sin/cos of the time of day and of the weekday at ``offsets`` steps from the origin,
    zero where the calendar is not real. (B, len(offsets), 4)."""
    days = calendar[:, 0:1] + offsets[None, :] * step_s / DAY_S  # (B, n)
    tod = days - torch.floor(days)
    dow = torch.remainder(calendar[:, 1:2] + torch.floor(days), 7.0)
    known = calendar[:, 2:3]
    angle_day, angle_week = 2 * math.pi * tod, 2 * math.pi * dow / 7.0
    codes = [
        torch.sin(angle_day),
        torch.cos(angle_day),
        torch.sin(angle_week),
        torch.cos(angle_week),
    ]
    return torch.stack([code * known for code in codes], dim=2)
