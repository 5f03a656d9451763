"""Where the shipped Triton model repository is.

The repository's source is the top-level `model_repository/` folder of the project. A wheel
(a non-editable install) carries a copy inside the package, `mosaic_serving/model_repository/`
(put there at build time by setup.py); a checkout or an editable install has only the
top-level folder. `default_model_repository` is the one place that knows both.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_REPOSITORY = PACKAGE_DIR / "model_repository"  # in an installed wheel
SOURCE_REPOSITORY = PACKAGE_DIR.parents[1] / "model_repository"  # in a checkout: <root>/src/mosaic_serving


def default_model_repository() -> Path:
    """The model repository shipped with the package: the installed copy, else the checkout's."""
    return PACKAGED_REPOSITORY if PACKAGED_REPOSITORY.is_dir() else SOURCE_REPOSITORY
