"""The offline verbs: ``stcast train`` (needs the train extra: torch) and ``stcast evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .offline.datasets import GridDataset, load_dataset
from .settings import Settings, zone_named


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from models.training import train
    except ImportError as exc:  # the runtime install has no torch
        raise RuntimeError(f"training needs torch ({exc}): pip install 'stcast[train]'") from None
    dataset = dataset_from_args(args)
    out = Path(args.out or f"models-out/{dataset.name}-{args.protocol}")
    if args.init:
        result = _fine_tune(args, dataset, out)
    else:
        result = train(
            dataset,
            args.protocol,
            out,
            args.preset,
            seed=args.seed,
            max_minutes=args.max_minutes,
            threads=args.threads,
        )
    print(
        f"trained {dataset.name} ({args.protocol}, preset {result.preset}) in "
        f"{result.seconds:.0f} s, {result.epochs} epochs (best {result.best_epoch}, "
        f"{result.stopped}); validation "
        + ", ".join(f"{k} {v:.4g}" for k, v in result.val_metrics.items())
        + f"\nwrote {result.model}, {result.card} and {result.checkpoint}\n"
        f"score it: stcast evaluate --model {out} --dataset {args.dataset} "
        f"--protocol {args.protocol}"
    )
    return 0


def _fine_tune(args: argparse.Namespace, dataset: GridDataset, out: Path) -> Any:
    from models.finetune_universal import fine_tune_universal

    from .bundled import model_path
    from .offline.network_context import network_context

    init = model_path(args.init)
    if not (init / "checkpoint.pt").is_file():
        raise ValueError(
            f"--init {args.init}: {init} holds no checkpoint.pt of a universal model (name "
            "'universal', or a directory stcast pretrain wrote)"
        )
    neighbours, calendar, _ = network_context(dataset, args.dataset, args.graph or None)
    return fine_tune_universal(
        dataset,
        args.protocol,
        out,
        init,
        seed=args.seed,
        max_minutes=args.max_minutes,
        threads=args.threads,
        neighbours=neighbours,
        calendar_known=calendar,
        sensor_rows=args.sensor_rows,
    )


def pretrain_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from models.pretraining import PretrainConfig, run_pretraining
    except ImportError as exc:  # the runtime install has no torch
        raise RuntimeError(
            f"pre-training needs torch ({exc}): pip install 'stcast[train]'"
        ) from None

    config = PretrainConfig(budget_s=args.budget_s, seed=args.seed)
    data_dir = Path(args.data_dir) if args.data_dir else None
    result = run_pretraining(
        Path(args.out), exclude=args.exclude, config=config, threads=args.threads, data_dir=data_dir
    )
    run = result.run
    print(
        f"pre-trained {result.card.model_id} on {len(result.sets)} sets "
        f"({', '.join(result.sets)}) in {run.seconds:.0f} s: {run.steps} steps, "
        f"{run.windows:,} windows, final loss {run.final_loss:.4f}\n"
        f"wrote {result.out}/model.onnx, card.json and checkpoint.pt\n"
        f"score it zero-shot: stcast evaluate --model {result.out} --dataset PATH"
    )
    return 0


def pretrain_args(parser: argparse.ArgumentParser) -> None:
    from .offline.corpus import PRETRAINING_SETS

    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument(
        "--exclude",
        nargs="*",
        action="extend",  # --exclude A B and --exclude A --exclude B alike
        default=[],
        metavar="DATASET",
        help=f"sets to leave out (of {', '.join(PRETRAINING_SETS)})",
    )
    parser.add_argument("--budget-s", type=float, default=3000.0, help="wall-clock seconds")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    _threads_arg(parser)
    parser.add_argument(
        "--data-dir", default="", help="the shared data folder (default: ../shared/data)"
    )


def train_args(parser: argparse.ArgumentParser) -> None:
    _protocol_and_dataset_args(parser)
    parser.add_argument("--out", default="", help="model directory to write (default: "
                        "models-out/NAME-PROTOCOL)")  # fmt: skip
    parser.add_argument(
        "--preset",
        default="tuned",
        help="network and optimiser preset (seed: the 2x50 LSTM of the literature; tuned: the "
        "measured best)",
    )
    parser.add_argument(
        "--init",
        default="",
        help="adapt a pre-trained model instead of training from scratch: 'universal' (the "
        "bundled one) or a directory stcast pretrain wrote",
    )
    parser.add_argument(
        "--graph",
        default="",
        help="--init: the network's graph file (edge list or matrix; default: the shared "
        "dataset's own, else learned from its history)",
    )
    parser.add_argument(
        "--sensor-rows",
        action="store_true",
        help="--init: add an embedding row per sensor of the network (measured worse on PEMS08's "
        "validation part, so off by default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (runs repeat exactly)")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="wall-clock budget")
    _threads_arg(parser)


def _threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (2 only pays on an otherwise idle machine: a busy core makes "
        "the second thread spin)",
    )


def _protocol_and_dataset_args(parser: argparse.ArgumentParser) -> None:
    from .offline.datasets import bundled_dataset_path
    from .offline.protocols import PROTOCOLS

    parser.add_argument(
        "--dataset",
        default=str(bundled_dataset_path()),
        help="dataset file or directory (default: the bundled PEMS08 slice)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="basicts",
        help="basicts: 6:2:2 or 7:1:2, window 12, horizon 12, masked per step; "
        "tgcn: 80/20, averages over 15/30/45/60 minutes",
    )
    dataset_grid_args(parser)
    forecast_channel_arg(parser)


def evaluate_command(args: argparse.Namespace, settings: Settings) -> int:
    from .bundled import model_path
    from .core.card import UNIVERSAL, ModelCard
    from .offline.evaluation import evaluate, format_table
    from .offline.network_context import network_context

    dataset = dataset_from_args(args)
    model = model_path(args.model) if args.model else None
    if model is not None and not model.is_dir():
        raise ValueError(
            f"--model {model}: no such directory (train one with stcast train, or name a "
            "bundled model: universal)"
        )
    if args.online:
        return _evaluate_online(args, settings, dataset, model)
    neighbours, calendar = None, True
    if model is not None and ModelCard.load(model).kind == UNIVERSAL:
        neighbours, calendar, _ = network_context(dataset, args.dataset, args.graph or None)
    report = evaluate(
        model,
        dataset,
        args.protocol,
        provider=settings.provider,
        threads=settings.inference_threads,
        neighbours=neighbours,
        calendar_known=calendar,
        interval_rate=settings.interval_rate,
        zone=zone_named(settings.timezone, "--timezone") if settings.timezone else None,
        progress=True,
    )
    if args.json:
        print(json.dumps(report.to_json(), allow_nan=False))
    else:
        print(format_table(report), end="")
    return 0


def _evaluate_online(
    args: argparse.Namespace, settings: Settings, dataset: GridDataset, model: Path | None
) -> int:
    import sys

    from .loop.online_eval import evaluate_online

    if model is None:
        raise ValueError("--online needs --model DIR: a model made by stcast train, or universal")
    try:
        import models.finetuning  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"--online retrains, which needs torch ({exc})") from None
    report = evaluate_online(
        model,
        dataset,
        args.scenario,
        seed=args.seed,
        settings=settings,
        policies=[p.strip() for p in args.policies.split(",") if p.strip()],
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report, allow_nan=False))
    else:
        print(format_online(report))
    return 0


def format_online(report: dict[str, Any]) -> str:
    lines = [
        f"online evaluation, scenario {report['scenario']} (seed {report['seed']}) on "
        f"{report['dataset']}; {report['faulted_sensors']} sensors faulted from "
        f"{report['onset']}; {report['after_drift_pairs']} forecasts after detections",
        f"{'policy':10s} {'retrains':>8s} {'MAE after drift':>16s}  MAE H1 / H3 / H6 / H12",
    ]
    for name, p in report["policies"].items():
        mae = p["mae"]
        steps = " / ".join(f"{mae[h - 1]:.2f}" for h in (1, 3, 6, 12) if h <= len(mae))
        after = p["mae_after_drift"]
        lines.append(
            f"{name:10s} {p['retrains']:>8d} {after if after is None else round(after, 2)!s:>16s}"
            f"  {steps}"
        )
    without = report.get("mae_after_drift_without_fault")
    if without is not None:
        lines.append(
            f"frozen on the same forecasts without the fault: {without:.2f} (what undoing the "
            "fault exactly would reach)"
        )
    lines.append("detection: " + json.dumps(report["detection"]))
    return "\n".join(lines)


def evaluate_args(parser: argparse.ArgumentParser) -> None:
    from .loop.online_eval import POLICIES, SCENARIOS

    parser.add_argument(
        "--model",
        default="",
        help="model directory, or 'universal' (the bundled pre-trained model); default: "
        "baselines only",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--graph",
        default="",
        help="a universal model's neighbours: the network's graph file (default: the shared "
        "dataset's own, else learned from the first 80 %% of its history)",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="stream the dataset through the pipeline and compare the frozen model, "
        "drift-triggered retraining and daily retraining (needs torch)",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="holiday",
        help="--online: the data as it is, or a fault injected on a tenth of the sensors",
    )
    parser.add_argument("--seed", type=int, default=0, help="--online: which sensors, when")
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="--online: the policies to run, comma-separated (frozen always runs: its "
        "detections are the ones measured)",
    )
    _protocol_and_dataset_args(parser)


def dataset_grid_args(parser: argparse.ArgumentParser) -> None:
    """``--start`` and ``--dataset-step-s``, for data that does not say where its grid lies."""
    from datetime import datetime

    parser.add_argument(
        "--start",
        type=datetime.fromisoformat,
        default=None,
        help="time of the dataset's first step, ISO 8601, UTC without an offset (when the "
        "data does not say)",
    )
    parser.add_argument(
        "--dataset-step-s",
        type=int,
        default=None,
        help="seconds between the dataset's steps (when the data does not say); a whole "
        "number of the data's own steps averages its readings into that coarser step",
    )
    missing_value_arg(parser)


def dataset_from_args(args: argparse.Namespace) -> GridDataset:
    """The dataset named by ``dataset_grid_args``' flags (and ``--dataset``), the channel
    ``--forecast-channel`` names first where the command has that flag."""
    dataset = load_dataset(
        args.dataset, start=args.start, step_s=args.dataset_step_s, missing=args.missing_value
    )
    return dataset.forecasting(channel_of(getattr(args, "forecast_channel", "0")))


def forecast_channel_arg(parser: argparse.ArgumentParser) -> None:
    """``--forecast-channel``: which of a dataset's channels is forecast (the first unless
    named)."""
    parser.add_argument(
        "--forecast-channel",
        default="0",
        metavar="NAME",
        help="the channel to forecast, by name (pm10, speed...) or index (default: the first)",
    )


def channel_of(text: str) -> str | int:
    """A channel flag's value: an index where it is digits, else a name."""
    return int(text) if text.isdigit() else text


def missing_value_arg(parser: argparse.ArgumentParser) -> None:
    """``--missing-value``: a code the data writes for a missing reading (repeatable)."""
    parser.add_argument(
        "--missing-value",
        type=float,
        action="append",
        default=[],
        metavar="X",
        help="a reading the data writes for a missing one, e.g. -200 or -9999 (repeatable; "
        "without it, such a code far below a column's other readings is found and named)",
    )
