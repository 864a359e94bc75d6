"""The modules' examples run: a docstring that shows a result must still give it."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    ".".join(source.relative_to(ROOT).with_suffix("").parts)
    for package in ("stream_app", "models", "export")
    for source in (ROOT / package).rglob("*.py")
    if ">>>" in source.read_text(encoding="utf-8")
)


def test_the_packages_hold_examples() -> None:
    assert "stream_app.core.drift" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_the_docstrings_give_what_they_show(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0
