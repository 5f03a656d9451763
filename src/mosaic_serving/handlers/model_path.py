"""Weights named by a local path are checked before any handler loads them.

A handler's `model_name_or_path` is either a hub id or a local directory. A hub id is
`org/name` (relative, one slash); anything absolute, starting with `.` or `~`, or deeper is a
local path. Without this check, a mistyped path becomes a hub lookup that fails later (or
hangs offline) with a confusing message.
"""

from __future__ import annotations

import os


def check_model_path(model_name_or_path: object) -> None:
    """Fail a load early and clearly when weights are named by a path that does not exist."""
    if not isinstance(model_name_or_path, str):
        return
    path = model_name_or_path
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise FileNotFoundError(
            f"model_name_or_path {path!r} does not exist (a local path; hub ids look like 'org/name')"
        )
