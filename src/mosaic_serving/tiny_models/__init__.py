"""Tiny random models, built locally and deterministically in seconds, with no hub access.

They have the real architectures and file layouts (so the handlers load them exactly as they
load real weights) and random weights: tests and the CPU demo server run on them.

    python -m mosaic_serving.tiny_models [CACHE_DIR]   # prints name=path lines
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
from pathlib import Path

# Bump a builder's version to rebuild its model in existing caches.
BUILDERS = {"mpt": 4, "mpt_small": 2, "instructor": 1, "diffusion": 1}
DEFAULT_CACHE = Path(os.environ.get("MOSAIC_SERVING_CACHE", Path.home() / ".cache" / "mosaic-serving"))


def tiny_model_path(name: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Build the tiny model `name` into `cache_dir` unless it is there already; return its path."""
    version = BUILDERS[name]
    path = Path(cache_dir) / f"tiny-{name}-v{version}"
    if not (path / ".complete").exists():
        partial = path.with_name(path.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        importlib.import_module(f"mosaic_serving.tiny_models.{name}").build(partial)
        (partial / ".complete").touch()
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache_dir", nargs="?", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", nargs="*", choices=sorted(BUILDERS), default=["mpt", "instructor", "diffusion"])
    args = parser.parse_args(argv)
    for name in args.only:
        print(f"{name}={tiny_model_path(name, args.cache_dir)}")


if __name__ == "__main__":
    main()
