"""Imports run one way: CLI and tools above the loop, the loop above the shell, the shell above
the core; the core does no I/O of its own (no asyncio, no Kafka client)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stream_app"
LAYERS = {"core", "kafka", "offline", "loop", "tools"}
# What each part of stream_app may import of stream_app (itself always).
ALLOWED = {
    "core": set(),
    "offline": {"core"},
    "settings": set(),
    "assembly": {"core", "offline", "settings", "bundled", "networks"},
    "networks": {"core", "settings"},
    "kafka": {"core", "settings", "assembly", "bundled", "networks"},
    "loop": {"core", "kafka", "offline", "settings", "assembly", "bundled", "networks"},
    "tools": {"core", "kafka", "offline", "loop", "settings", "assembly", "bundled", "networks"},
}
FORBIDDEN_LIBRARIES = {
    "core": {"asyncio", "aiokafka", "faust", "torch"},
    "offline": {"asyncio", "aiokafka", "faust", "torch"},
}
MAX_MODULES = 15


def part_of(module: str) -> str:
    """``stream_app.core.records`` -> ``core``; ``stream_app.settings`` -> ``settings``."""
    return module.split(".")[1] if module.count(".") else ""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, at the top or inside a function, as an absolute name."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            levels = package.split(".")
            prefix = ".".join(levels[: len(levels) - node.level + 1]) if node.level else ""
            target = ".".join(filter(None, [prefix, node.module or ""]))
            found.add(target)
            if node.module is None:  # from . import x
                found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that break the direction of the layers."""
    part = part_of(module)
    if part not in ALLOWED:
        return []  # the CLI, __init__ and __main__ sit on top and may import anything
    wrong = []
    for target in sorted(imports_of(source, module, is_package)):
        top, _, rest = target.partition(".")
        used = rest.split(".")[0] if top == "stream_app" else None
        if (used and used != part and used not in ALLOWED[part]) or (
            top in FORBIDDEN_LIBRARIES.get(part, set())
        ):
            wrong.append(f"{module} imports {target}")
    return wrong


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert violations(source, module_name(path), path.name == "__init__.py") == []


def test_every_layer_is_a_folder_of_at_most_15_modules() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == LAYERS
    for folder in folders:
        modules = [p for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py"]
        assert 0 < len(modules) <= MAX_MODULES, folder


def test_the_checker_sees_a_core_module_importing_the_shell_or_asyncio() -> None:
    source = "import asyncio\nfrom ..kafka.serving import serve\nfrom . import records\n"
    assert violations(source, "stream_app.core.probe") == [
        "stream_app.core.probe imports asyncio",
        "stream_app.core.probe imports stream_app.kafka.serving",
    ]
    lazy = "def f():\n    from ..tools.demo import run_demo\n"
    assert violations(lazy, "stream_app.kafka.probe") == [
        "stream_app.kafka.probe imports stream_app.tools.demo"
    ]
    assert violations("from ..core.records import Tick\n", "stream_app.kafka.probe") == []
