"""Zero-shot, leave one out: for each dataset, a model pre-trained without it, scored on it.

For every set of the pre-training corpus (or those named): ``stcast pretrain --exclude SET``
for ``--budget-s`` seconds, then ``stcast evaluate --model M --dataset SET --json`` (its test
part, under the usual protocol: tgcn for Los-loop and SZ-taxi, basicts otherwise) beside
persistence, seasonal naive and the window mean, and, with ``--tuned-minutes``, the ``tuned``
preset trained from scratch on the set itself (``stcast train``). Each set's figures go to
``OUT/SET.json`` as they come, so an interrupted run resumes where it stopped; the table at the
end gives relative MAE (model / seasonal naive, model / persistence) per set and their geometric
means.

    python benchmarks/zero_shot.py --out zero-shot --budget-s 360 --tuned-minutes 6
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stream_app.offline.corpus import PRETRAINING_SETS, data_file
from stream_app.offline.datasets import shared_data_dir

PROTOCOLS = {"LOS_LOOP": "tgcn", "SZ_TAXI": "tgcn"}


def stcast(*args: str) -> str:
    """Run an stcast verb; its standard output (``--json`` output is one line)."""
    done = subprocess.run(
        [sys.executable, "-m", "stream_app", *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"stcast {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def leave_one_out(name: str, out: Path, budget_s: float, tuned_minutes: float) -> dict[str, Any]:
    data = str(data_file(name, shared_data_dir()))
    protocol = PROTOCOLS.get(name, "basicts")
    model = out / f"without-{name}"
    started = time.monotonic()
    if not (model / "card.json").is_file():
        stcast("pretrain", "--out", str(model), "--exclude", name, "--budget-s", str(budget_s),
               "--threads", "1")  # fmt: skip
    pretrain_s = time.monotonic() - started
    report = json.loads(
        stcast(
            "evaluate", "--model", str(model), "--dataset", data, "--protocol", protocol, "--json"
        )
    )
    result: dict[str, Any] = {
        "set": name,
        "protocol": protocol,
        "pretrain_budget_s": budget_s,
        "pretrain_wall_s": round(pretrain_s, 1),
        "zero_shot": report,
    }
    if tuned_minutes > 0:
        tuned = out / f"tuned-{name}"
        if not (tuned / "card.json").is_file():
            stcast("train", "--dataset", data, "--protocol", protocol, "--out", str(tuned),
                   "--max-minutes", str(tuned_minutes), "--threads", "1")  # fmt: skip
        result["tuned"] = json.loads(
            stcast(
                "evaluate",
                "--model",
                str(tuned),
                "--dataset",
                data,
                "--protocol",
                protocol,
                "--json",
            )
        )
    return result


def mean_mae(report: dict[str, Any], method: str) -> float:
    values = [v for v in report["metrics"][method]["mae"] if v is not None]
    return sum(values) / len(values)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per set, mean MAE over the reported horizons of every method, the ratios."""
    lines = [
        "| set | protocol | universal (zero-shot) | persistence | seasonal naive | window mean | "
        "tuned (from scratch) | / seasonal naive | / persistence | coverage 0.1-0.9 | served |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios: dict[str, list[float]] = {"seasonal_naive": [], "persistence": []}
    for r in results:
        z = r["zero_shot"]
        tuned = f"{mean_mae(r['tuned'], 'model'):.4g}" if "tuned" in r else "-"
        rel = z["relative_mae"]
        share = z["coverage"].get("served", {}).get("overall")
        served = "-" if share is None else f"{share:.3f}"
        for key in ratios:
            ratios[key].append(rel[key])
        lines.append(
            f"| {r['set']} | {r['protocol']} | {mean_mae(z, 'model'):.4g} | "
            f"{mean_mae(z, 'persistence'):.4g} | {mean_mae(z, 'seasonal_naive'):.4g} | "
            f"{mean_mae(z, 'window_mean'):.4g} | {tuned} | {rel['seasonal_naive']:.3f} | "
            f"{rel['persistence']:.3f} | {z['coverage']['overall']:.3f} | {served} |"
        )
    means = {k: math.exp(sum(map(math.log, v)) / len(v)) for k, v in ratios.items() if v}
    if means:
        lines.append(
            f"| geometric mean ({len(results)} sets) | | | | | | | "
            f"{means['seasonal_naive']:.3f} | {means['persistence']:.3f} | | |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for models and figures")
    parser.add_argument("--sets", nargs="*", default=list(PRETRAINING_SETS))
    parser.add_argument("--budget-s", type=float, default=360.0, help="pre-training seconds")
    parser.add_argument("--tuned-minutes", type=float, default=0.0, help="0: no tuned model")
    parser.add_argument("--table-only", action="store_true", help="print the table of OUT")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in [] if args.table_only else args.sets:
        figures = args.out / f"{name}.json"
        if not figures.is_file():
            result = leave_one_out(name, args.out, args.budget_s, args.tuned_minutes)
            figures.write_text(json.dumps(result) + "\n")
            print(f"{name}: done", file=sys.stderr, flush=True)
    results = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))]
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
