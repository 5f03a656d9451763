"""Build step: the wheel carries the top-level `model_repository/` inside the package.

The folder stays at the project's root, where users and the Docker image find it; a
non-editable install gets a copy at `mosaic_serving/model_repository/`, which
`mosaic_serving.repository.default_model_repository` finds. (All other settings are in
pyproject.toml.)
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithModelRepository(build_py):
    """build_py, plus the model repository copied into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the folder at the root
            return
        source = ROOT / "model_repository"
        if not (source / "custom_example" / "config.pbtxt").is_file():
            raise SystemExit(f"{source} is missing: the package is built with its model repository")
        target = Path(self.build_lib) / "mosaic_serving" / "model_repository"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithModelRepository})
