"""Print stcast's requirements for one image, one per line, from pyproject.toml.

pip cannot swap one distribution for another, and the runtime depends on ``onnxruntime-gpu`` on
x86-64 Linux. An image installs these requirements first and then stcast itself with
``--no-deps``, so the edge and retrain images get the CPU build and the cloud image the CUDA one,
whatever the machine that builds them.

    python docker/requirements.py --onnxruntime cpu [--extra train] > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

BUILDS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}


def requirements(pyproject: Path, build: str, extras: list[str]) -> list[str]:
    """The runtime dependencies (plus ``extras``) with exactly one onnxruntime build."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    kept, runtime_spec = [], ""
    for requirement in wanted:
        name, spec = _split(requirement)
        if name in BUILDS.values():
            runtime_spec = runtime_spec or spec
        elif requirement not in kept:
            kept.append(requirement)
    if not runtime_spec:
        raise SystemExit(f"{pyproject}: no onnxruntime requirement found")
    return [*kept, BUILDS[build] + runtime_spec]


def _split(requirement: str) -> tuple[str, str]:
    """('onnxruntime-gpu', '>=1.18') from 'onnxruntime-gpu>=1.18; platform_system == ...'."""
    match = re.match(r"\s*([A-Za-z0-9._-]+)\s*([^;]*)", requirement)
    if match is None:
        raise SystemExit(f"cannot read the requirement {requirement!r}")
    return match.group(1).lower().replace("_", "-"), match.group(2).strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnxruntime", choices=sorted(BUILDS), required=True)
    parser.add_argument("--extra", action="append", default=[], help="optional dependencies")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.onnxruntime, args.extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
