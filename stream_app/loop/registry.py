"""The model registry: a directory tree of published model versions, and which one serves.

::

    REGISTRY/NAME/VERSION/model.onnx, card.json (and checkpoint.pt, to fine-tune from)
    REGISTRY/NAME/CURRENT        the serving version's name, one line

A version is published by copying it into a hidden directory beside its final place and
renaming it there, so a reader never sees half a version; a published version is never
changed. ``CURRENT`` is replaced the same way. Rolling back is pointing ``CURRENT`` at an older
version and announcing it on ``stcast.models``: workers swap to whatever was announced last.
Versions are numbered 1, 2, 3...; a version's number is also in its card, so a forecast's
``model`` field (``name@version``) names the directory it came from.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.card import CARD_FILE, ModelCard

CURRENT_FILE = "CURRENT"


class RegistryError(ValueError):
    """The registry cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class Version:
    """One published model: its name, version and directory, and its card."""

    name: str
    version: str
    path: Path
    card: ModelCard

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    def announcement(self, **validation: Any) -> dict[str, Any]:
        """The model update record of DESIGN.md for this version."""
        return {
            "model": self.model_id,
            "uri": self.path.resolve().as_uri(),
            "sha256": self.card.onnx_sha256,
            "card": json.loads((self.path / CARD_FILE).read_text()),
            "validation": validation,
        }


class Registry:
    """The registry rooted at ``root`` (created on first publish)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _visible(p.name))

    def versions(self, name: str) -> list[str]:
        """Published versions of ``name``, oldest first."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if p.is_dir() and _visible(p.name)]
        return sorted(found, key=_version_key)

    def current(self, name: str) -> Version | None:
        """The serving version of ``name``, or None when nothing of that name was published."""
        pointer = self.root / name / CURRENT_FILE
        if not pointer.is_file():
            return None
        return self.get(name, pointer.read_text().strip())

    def get(self, name: str, version: str) -> Version:
        path = self.root / name / version
        if not (path / CARD_FILE).is_file():
            known = ", ".join(self.versions(name)) or "none"
            raise RegistryError(f"{name}@{version} is not in {self.root} (versions: {known})")
        return Version(name, version, path, ModelCard.load(path / CARD_FILE))

    def next_version(self, name: str) -> str:
        numbered = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(numbered, default=0) + 1)

    def publish(self, source: Path, *, make_current: bool = True) -> Version:
        """Copy the model in ``source`` in as the version its card names; refuse to overwrite.

        ``source`` is opened as a worker would open it first (card, hash, inputs, outputs), so
        the registry only ever holds models a worker accepts.
        """
        from ..core.onnx_forecaster import OnnxForecaster  # onnxruntime: only when publishing

        step = 0 if ModelCard.load(source).step_s else 60  # a universal model: any step will do
        card = OnnxForecaster(source, provider="cpu", step_s=step).card
        name, version = card.name, card.version
        if not _visible(name) or not _visible(version) or "/" in name + version:
            raise RegistryError(
                f"{card.model_id}: names and versions cannot start with '.' or hold '/'"
            )
        final = self.root / name / version
        if final.exists():
            raise RegistryError(f"{card.model_id} is already published at {final}")
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".publishing-", dir=final.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from workers running as others
        try:
            for item in sorted(source.iterdir()):
                if item.is_file():
                    shutil.copy2(item, staging / item.name)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if make_current:
            self.set_current(name, version)
        return self.get(name, version)

    def set_current(self, name: str, version: str) -> Version:
        """Point ``CURRENT`` at a published version (a rollback, when it is an older one)."""
        chosen = self.get(name, version)
        pointer = self.root / name / CURRENT_FILE
        fd, tmp = tempfile.mkstemp(prefix=".current-", dir=pointer.parent)
        with os.fdopen(fd, "w") as out:
            out.write(version + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, pointer)
        return chosen

    def retire(self, name: str) -> None:
        """No version of ``name`` serves any more (its only one was rolled back to the model
        it was fine-tuned from); its versions stay."""
        (self.root / name / CURRENT_FILE).unlink(missing_ok=True)


def parse_model_id(model_id: str) -> tuple[str, str]:
    """``name@version`` into its parts; ``RegistryError`` when it is not of that form."""
    name, sep, version = model_id.rpartition("@")
    if not sep or not name or not version:
        raise RegistryError(f"expected NAME@VERSION, got {model_id!r}")
    return name, version


def _visible(name: str) -> bool:
    return bool(name) and not name.startswith(".")


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)
