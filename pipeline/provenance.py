"""Where a result came from: the repository root, the code version, the DVC experiment."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

# `dvc exp run --queue/--temp` executes in a copy of the repository under this folder.
_EXP_TMP = os.path.join(".dvc", "tmp", "exps")


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The user's repository root, also from inside a queued DVC experiment's copy.

    Queued experiments run in `<root>/.dvc/tmp/exps/<name>/`; anything that must be
    shared by every experiment (the MLflow store) is addressed from the real root.
    """
    here = Path(start or os.getcwd()).resolve()
    s = str(here)
    marker = os.sep + _EXP_TMP + os.sep
    if marker in s + os.sep:
        return Path((s + os.sep).split(marker)[0])
    return here


def _git(*args: str, cwd=None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version(cwd=None) -> str:
    """The git commit of the code, with '-dirty' when the code (not params) has local edits."""
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return "unknown"
    dirty = _git("status", "--porcelain", "--", "pipeline", "models", cwd=cwd)
    return commit + ("-dirty" if dirty else "")


def dvc_experiment() -> str:
    """The DVC experiment name when run by `dvc exp run`, else 'workspace'."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"
