"""The runtime never imports torch, and torch is a training-only dependency."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = [
    "stream_app",
    "stream_app.core.pipeline",
    "stream_app.core.onnx_forecaster",
    "stream_app.kafka.serving",
    "stream_app.kafka.worker",
    "stream_app.cli",
]


@pytest.fixture
def fake_torch(tmp_path: Path) -> Path:
    """A stub ``torch`` first on the path: importing it is then seen even where torch is absent."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    return tmp_path


def imported_modules(path_first: Path) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in RUNTIME)
    code += "print('\\n'.join(sorted(sys.modules)))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path_first), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_runtime_does_not_import_torch(fake_torch: Path) -> None:
    modules = imported_modules(fake_torch)
    assert set(RUNTIME) <= modules  # the imports did happen
    assert "torch" not in modules
    assert not {m for m in modules if m.startswith(("torch.", "models", "export"))}


def test_the_stub_would_be_seen(fake_torch: Path) -> None:
    code = "import sys, json; import torch; print(torch.__file__)"
    env = {**os.environ, "PYTHONPATH": str(fake_torch)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == str(fake_torch / "torch" / "__init__.py")


def test_torch_is_only_a_training_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "torch" in d.lower()]
    assert "torch==2.13.0" in project["optional-dependencies"]["train"]
    for extra, requirements in project["optional-dependencies"].items():
        if extra not in ("train", "all"):
            assert not [d for d in requirements if "torch" in d.lower()], extra
