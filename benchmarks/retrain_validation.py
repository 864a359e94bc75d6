"""Does a retrain's holdout say how its challenger will serve? A rolling backtest.

At every ``--every`` steps of a dataset (the bundled PEMS08 slice by default) that has a day of
history behind it and ``--ahead-s`` of readings after it, the retrain worker's procedure runs on
the readings up to that step (``--history-s`` of them, the worker's default): a universal model
(the bundled one by default) is fine-tuned as ``fine_tune_recent`` does, the newest
``--holdout-steps`` held back. The challenger and the model it would replace are then scored on
the same windows of three parts:

- ``newest``: the holdout the retrain worker validates on;
- ``yesterday``: the ``--ahead-s`` after the newest reading, a day earlier: the hours the
  challenger would serve next, as they went the day before. With ``--yesterday-held-out`` they
  are never a fine-tuning target, so that they are a second holdout; without, the challenger has
  fitted them;
- ``served``: the ``--ahead-s`` after the newest reading, which a worker cannot see when it
  decides: how the challenger would have served (the canary's time, by default).

Each line gives challenger MAE over champion MAE (all horizon steps; at the last one). Then,
for each rule (accept when the challenger's MAE is ``--min-gain`` below the champion's on the
parts it names), how its decisions turned out when served: accepted and better, accepted and
worse, rejected and better, rejected and worse, and the mean served ratio of what it accepted.

    python benchmarks/retrain_validation.py --budget-s 30
    python benchmarks/retrain_validation.py --budget-s 30 --yesterday-held-out
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from models.finetune_universal import fine_tune_recent
from stream_app.bundled import model_path
from stream_app.core.card import UNIVERSAL, ModelCard
from stream_app.core.onnx_forecaster import OnnxForecaster
from stream_app.loop.challenger import holdout_split
from stream_app.offline.datasets import GridDataset, bundled_dataset_path, load_dataset
from stream_app.offline.eval_baselines import evaluation_samples
from stream_app.offline.evaluation import model_forecasts

DAY_S = 86_400
PARTS = ("newest", "yesterday", "served")


def ratios(
    champion: OnnxForecaster, challenger: OnnxForecaster, data: GridDataset, holdout_from: int
) -> tuple[float, float]:
    """Challenger over champion MAE on the windows whose targets lie from ``holdout_from`` to
    the end of ``data`` (zero readings skipped, as the masked protocol does): all steps, last."""
    samples = evaluation_samples(data, holdout_split(champion, data.n_steps, holdout_from, True))
    target = samples.targets
    valid = np.isfinite(target) & (target != 0)
    mae = []
    for model in (champion, challenger):
        error = np.where(valid, np.abs(model_forecasts(model, data, samples) - target), np.nan)
        mae.append((float(np.nanmean(error)), float(np.nanmean(error[:, -1]))))
    return mae[1][0] / mae[0][0], mae[1][1] / mae[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None, help="default: the bundled slice")
    parser.add_argument("--model", type=Path, default=None, help="default: bundled universal")
    parser.add_argument("--every", type=int, default=50, help="steps between retrains")
    parser.add_argument("--history-s", type=float, default=3 * DAY_S)
    parser.add_argument("--holdout-steps", type=int, default=36)
    parser.add_argument("--ahead-s", type=float, default=21_600.0)
    parser.add_argument("--min-gain", type=float, default=0.02)
    parser.add_argument("--budget-s", type=float, default=30.0, help="per fine-tuning")
    parser.add_argument("--yesterday-held-out", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="one line per retrain here")
    args = parser.parse_args()
    data = load_dataset(args.dataset or bundled_dataset_path())
    model = args.model or model_path("universal")
    if ModelCard.load(model).kind != UNIVERSAL:
        sys.exit(f"{model} is not a universal model: this backtest fine-tunes universal ones")
    day, ahead = DAY_S // data.step_s, int(args.ahead_s) // data.step_s
    history = int(args.history_s) // data.step_s
    horizon = ModelCard.load(model).horizon
    if ahead <= horizon or day < ahead + args.holdout_steps:
        sys.exit(f"--ahead-s must hold more than {horizon} steps and, with the holdout, a day")
    rows = []
    for end in range(day + args.holdout_steps, data.n_steps - ahead - horizon, args.every):
        first = max(0, end + 1 - history)
        recent = data.target_steps(first, end + 1)
        n = recent.n_steps
        yesterday = range(n - day, n - day + ahead)
        with tempfile.TemporaryDirectory(prefix="stcast-backtest-") as tmp:
            tuned = fine_tune_recent(
                model, recent, n - args.holdout_steps, Path(tmp), "backtest", "2",
                max_seconds=args.budget_s, held_out=yesterday if args.yesterday_held_out else None,
            )  # fmt: skip
            champion = OnnxForecaster(model, provider="cpu", step_s=data.step_s)
            challenger = OnnxForecaster(Path(tmp), provider="cpu", step_s=data.step_s)
            row = {
                "at": str(recent.timestamps()[-1].astype("datetime64[s]")),
                "best_epoch": tuned.best_epoch,
                "newest": ratios(champion, challenger, recent, n - args.holdout_steps),
                "yesterday": ratios(
                    champion,
                    challenger,
                    data.target_steps(first, first + yesterday.stop),
                    yesterday.start,
                ),
                "served": ratios(
                    champion, challenger, data.target_steps(first, end + 1 + ahead + horizon), n
                ),
            }
        rows.append(row)
        parts = "  ".join(f"{k} {row[k][0]:.3f} / {row[k][1]:.3f}" for k in PARTS)
        print(f"{row['at']}  epoch {row['best_epoch']}  {parts}", flush=True)
        if args.json:
            with args.json.open("a") as out:
                out.write(json.dumps(row) + "\n")
    rules = {"newest": ("newest",)}
    if args.yesterday_held_out:
        rules["newest and yesterday"] = ("newest", "yesterday")
    print(f"rules (accept at {args.min_gain:.0%} below), against the served ratio:")
    for name, parts in rules.items():
        accepted = [all(r[p][0] < 1 - args.min_gain for p in parts) for r in rows]
        better = [r["served"][0] < 1 for r in rows]
        counts = [sum(a == x and b == y for a, b in zip(accepted, better, strict=True))
                  for x in (True, False) for y in (True, False)]  # fmt: skip
        kept = [r["served"][0] for r, a in zip(rows, accepted, strict=True) if a]
        mean = f"{np.mean(kept):.3f}" if kept else "-"
        print(
            f"  {name}: accepted and better {counts[0]}, accepted and worse {counts[1]}, "
            f"rejected and better {counts[2]}, rejected and worse {counts[3]}; "
            f"served ratio of the accepted {mean}"
        )


if __name__ == "__main__":
    main()
