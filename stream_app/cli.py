"""The ``stcast`` command line: one sub-command per verb of DESIGN.md.

Settings flags are generated from ``Settings``: ``--batch-size`` defaults to ``STCAST_BATCH_SIZE``
and then to the declared default, and ``--help`` shows both names.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import Field
from pathlib import Path
from typing import Any

from .cli_offline import (
    channel_of,
    dataset_from_args,
    dataset_grid_args,
    evaluate_args,
    evaluate_command,
    forecast_channel_arg,
    pretrain_args,
    pretrain_command,
    train_args,
    train_command,
)
from .settings import Settings, env_name, setting_fields

CLUSTER = (
    "bootstrap_servers",
    "security_protocol",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ticks_topic",
    "forecasts_topic",
    "dlq_topic",
    "partitions",
    "compression",
)
Command = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(**_overrides(args))
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        command: Command = args.command
        return command(args, settings)
    except (ValueError, RuntimeError, OSError) as exc:  # contract, settings and I/O errors
        print(f"stcast {args.verb}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stcast", description="Streaming spatial-temporal forecasting on Kafka."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for verb, (command, help_text, settings, extra) in _VERBS.items():
        sub = verbs.add_parser(verb, help=help_text, description=help_text)
        sub.set_defaults(command=command)
        _add_settings(sub, settings)
        extra(sub)
    return parser


def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str] | None) -> None:
    group = parser.add_argument_group("settings (flag, or environment variable)")
    for f in setting_fields():
        if names is None or f.name in names:
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_flag_type(f),
                choices=f.metadata.get("choices"),
                default=None,
                help=f"{f.metadata['help']} [{env_name(f.name)}{_default_text(f.default)}]",
            )


def _default_text(default: Any) -> str:
    if isinstance(default, float) and math.isnan(default):  # unset: the help says what then
        return ""
    return f"; default {default!r}"


def _flag_type(f: Field[Any]) -> Callable[[str], Any]:
    kind: Callable[[str], Any] = type(f.default)
    return kind


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in setting_fields()}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


# -- the verbs ------------------------------------------------------------------------------


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from .kafka.worker import run_worker

    return run_worker(settings)


def _retrain_worker(args: argparse.Namespace, settings: Settings) -> int:
    from .loop.retraining import run_retrain_worker

    return run_retrain_worker(settings)


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from .loop.registry import Registry, parse_model_id

    if not settings.model_registry:
        raise ValueError("give the registry: --model-registry DIR or STCAST_MODEL_REGISTRY")
    registry = Registry(Path(settings.model_registry))
    if args.action == "list":
        for name in registry.names():
            current = registry.current(name)
            for version in registry.versions(name):
                mark = "*" if current is not None and current.version == version else " "
                card = registry.get(name, version).card
                print(f"{mark} {name}@{version}  created {card.created_at}")
        return 0
    if not args.target:
        raise ValueError(f"stcast models {args.action} needs a {_TARGETS[args.action]}")
    if args.action == "publish":
        chosen = registry.publish(Path(args.target))
    else:  # use: point CURRENT at a version, older (a rollback) or newer
        chosen = registry.set_current(*parse_model_id(args.target))
    print(f"{chosen.model_id} is current in {registry.root}")
    if args.announce:
        from .loop.retraining import announce_now

        # a version chosen by hand is served without a canary; a new one published gets one
        validation = {"by": f"stcast models {args.action}", "canary": args.action != "use"}
        announce_now(settings, chosen, validation)
        print(f"announced {chosen.model_id} on {settings.models_topic}")
    return 0


_TARGETS = {"publish": "model directory", "use": "NAME@VERSION"}


def _models_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("list", "publish", "use"),
        help="list: versions (* = current); publish DIR: add a trained model as the version "
        "its card names and make it current; use NAME@VERSION: make a version current "
        "(rollback)",
    )
    parser.add_argument("target", nargs="?", default="", help="DIR (publish) or NAME@VERSION")
    parser.add_argument(
        "--announce",
        action="store_true",
        help="also announce the current version on the models topic: workers swap to it",
    )


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from .tools.broker import serve_forever

    return serve_forever(args.port, args.host)


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from .kafka.clients import client_options, producer_options
    from .kafka.topics import ensure_topics_sync
    from .tools.replay import replay

    dataset = dataset_from_args(args)
    options = client_options(settings)
    topics = {settings.ticks_topic: settings.partitions}
    ensure_topics_sync(settings.bootstrap_servers, topics, client_options=options)
    report = asyncio.run(
        replay(
            settings.bootstrap_servers,
            settings.ticks_topic,
            dataset,
            channel=dataset.channel_index(
                int(args.channel) if args.channel.isdigit() else args.channel
            ),
            batched=args.batched,
            speed=args.speed,
            start_step=args.start_step,
            steps=args.steps,
            network=args.network or None,
            client_options=producer_options(settings),
        )
    )
    print(
        f"replayed {report.ticks} ticks of {dataset.name} in {report.messages} messages, "
        f"{report.seconds:.1f} s ({report.messages_per_s:,.0f} messages/s)"
    )
    return 0


def _replay_args(parser: argparse.ArgumentParser) -> None:
    from .offline.datasets import bundled_dataset_path

    parser.add_argument(
        "dataset",
        nargs="?",
        default=str(bundled_dataset_path()),
        help="dataset file or directory (default: the bundled PEMS08 slice)",
    )
    parser.add_argument("--batched", action="store_true", help="one message per step")
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="multiple of real time (300: a 5-minute step per second); 0 = as fast as possible",
    )
    parser.add_argument("--channel", default="0", help="channel index or name (flow, speed...)")
    parser.add_argument("--start-step", type=int, default=0, help="first step to publish")
    parser.add_argument("--steps", type=int, default=None, help="how many steps (default: all)")
    parser.add_argument("--network", default="", help="network id stamped on each tick")
    dataset_grid_args(parser)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from .tools.demo import run_demo

    return run_demo(
        settings,
        Path(args.dataset),
        batched=args.batched,
        steps=args.steps,
        steps_per_s=args.steps_per_s,
        as_json=args.json,
        missing=args.missing_value,
        channel=channel_of(args.forecast_channel),
        start=args.start,
        step_s=args.dataset_step_s,
    )


def _demo_args(parser: argparse.ArgumentParser) -> None:
    from .offline.datasets import bundled_dataset_path

    parser.add_argument(
        "--dataset",
        default=str(bundled_dataset_path()),
        help="dataset to stream (default: the bundled PEMS08 slice)",
    )
    parser.add_argument("--batched", action="store_true", help="publish one message per step")
    dataset_grid_args(parser)  # for data that does not say its start and step (an array)
    forecast_channel_arg(parser)
    parser.add_argument("--steps", type=int, default=None, help="steps to stream (default: all)")
    parser.add_argument(
        "--steps-per-s",
        type=float,
        default=6.0,
        help="pace after the first three days (streamed as fast as they go), in grid steps per "
        "second",
    )
    parser.add_argument("--json", action="store_true", help="end with a JSON report only")


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from .tools.bench import run_bench

    return run_bench(settings, as_json=args.json, steps=args.steps, repeat=args.repeat)


def _bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int, default=None, help="PEMS08 steps per run (all)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of (a) to (d), interleaved; medians reported"
    )


def _no_args(parser: argparse.ArgumentParser) -> None:
    del parser


_VERBS: dict[str, tuple[Command, str, Sequence[str] | None, Callable[..., None]]] = {
    "demo": (
        _demo,
        "the main job: serve zero-shot, stream, detect drift, fine-tune and swap, on the "
        "embedded broker",
        ("batch_size", "model_dir", "log_level"),
        _demo_args,
    ),
    "broker": (_broker, "run the embedded Kafka-compatible broker (Tansu)", (), _broker_args),
    "replay": (_replay, "publish a dataset to the ticks topic as ticks", CLUSTER, _replay_args),
    "worker": (_worker, "run a forecasting worker", None, _no_args),
    "retrain-worker": (
        _retrain_worker,
        "fine-tune, validate and publish models on retrain events",
        None,
        _no_args,
    ),
    "models": (
        _models,
        "the model registry: list versions, publish one, make one current (rollback)",
        (*CLUSTER, "models_topic", "model_registry", "log_level"),
        _models_args,
    ),
    "train": (
        train_command,
        "train a global LSTM on a dataset and export model.onnx + card.json",
        ("log_level",),
        train_args,
    ),
    "pretrain": (
        pretrain_command,
        "pre-train the universal forecaster on the shared datasets and export it",
        ("log_level",),
        pretrain_args,
    ),
    "evaluate": (
        evaluate_command,
        "score a model and the baselines on a dataset's test part, or --online: the loop",
        (
            "provider",
            "inference_threads",
            "timezone",
            "log_level",
            "drift_detector",
            "drift_threshold",
            "drift_delta",
            "drift_adwin_delta",
            "drift_warmup",
            "drift_cooldown",
            "drift_feedback_gain",
            "drift_reanchor",
            "retrain_cooldown_s",
            "retrain_min_sensors",
            "retrain_min_share",
            "retrain_history_s",
            "retrain_holdout_steps",
            "retrain_max_s",
            "retrain_min_gain",
            "retrain_threads",
        ),
        evaluate_args,
    ),
    "bench": (
        _bench,
        "measure inference, faust and end-to-end throughput and latency",
        ("batch_size", "batch_wait_s", "model_dir", "log_level"),
        _bench_args,
    ),
}
