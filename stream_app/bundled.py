"""Models shipped inside the package, addressed by name wherever a model directory is accepted.

``universal`` is the pre-trained forecaster (``stcast pretrain``; how it was made is in its
card's ``training``). A name that is not bundled is taken as a directory path.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
BUNDLED = {"universal": PACKAGE_DATA / "universal"}
UNIVERSAL = "universal"


def model_path(name_or_dir: str | Path) -> Path:
    """The directory of a bundled model named ``name_or_dir``, else ``name_or_dir`` itself.

    >>> model_path("universal").name, model_path("models-out/pems08").as_posix()
    ('universal', 'models-out/pems08')
    """
    return BUNDLED.get(str(name_or_dir), Path(name_or_dir))
