"""Where a result came from: the repository root, the code and its version, the DVC
experiment, the library versions."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

# `dvc exp run --queue/--temp` executes in a copy of the repository under this folder.
_EXP_TMP = os.path.join(".dvc", "tmp", "exps")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding pipeline/ and models/

# The code that computes a trained arm and writes its files: the arm's
# fingerprint hashes these folders and files, and the train stage in dvc.yaml
# depends on them. tests/test_armstore.py checks that this code imports nothing
# else of the project but ARM_CODE_OUTSIDE, and that the driver writes an arm's
# files with functions defined here.
ARM_CODE = ("models", "pipeline/training", "pipeline/core/dataset.py", "pipeline/core/contracts.py")
# What the arm's code may import from outside ARM_CODE without it being hashed, and why.
ARM_CODE_OUTSIDE = {
    "pipeline.core.config": "an arm's resolved config values are part of its fingerprint",
    "pipeline.core.errors": "error messages only",
    "pipeline.core.stats": "the evaluation's result types, which contracts.py also defines; no arm file holds one",
}
# The libraries whose versions are part of an arm's identity.
ARM_LIBRARIES = ("torch", "torchvision", "numpy")


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The user's repository root, also from inside a queued DVC experiment's copy.

    Queued experiments run in `<root>/.dvc/tmp/exps/<name>/`; what every
    experiment shares (the caches, the tracking journal) is addressed from the real root.
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


def library_versions(names=ARM_LIBRARIES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _semantic_source(text: str, name: str) -> str:
    """What a Python file computes, without its comments and docstrings: editing
    documentation does not change it, editing code does."""
    try:
        tree = ast.parse(text, filename=name)
    except SyntaxError:
        return text
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def code_digest(folders=ARM_CODE, root: Path = PACKAGE_ROOT, remember: bool = True) -> str:
    """sha256 over every .py file in `folders` (folders or files, relative to `root`),
    by path and by what the code does (comments and docstrings left out). Each file's
    part is remembered by its size and modification time (parsing is the slow part),
    in the repository's .cache/ unless `remember` is False (a Ray worker, which has no
    repository of its own)."""
    known = _digest_cache() if remember else {}
    h = hashlib.sha256()
    for folder in folders:
        where = root / folder
        for f in [where] if where.suffix == ".py" else sorted(where.rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            rel = f.relative_to(root).as_posix()
            st = f.stat()
            stamp = f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}"
            part = known.get(stamp)
            if part is None:
                part = hashlib.sha256(_semantic_source(f.read_text(encoding="utf-8"), rel).encode()).hexdigest()
                known[stamp] = part
                _DIRTY[0] = True
            h.update(rel.encode() + b"\0" + part.encode() + b"\0")
    if remember:
        _save_digest_cache(known)
    return h.hexdigest()


_DIGESTS: dict[str, str] | None = None
_DIRTY = [False]


def _digest_cache_path() -> Path:
    return repo_root() / ".cache" / "code-digests.json"


def _digest_cache() -> dict[str, str]:
    global _DIGESTS
    if _DIGESTS is None:
        try:
            _DIGESTS = json.loads(_digest_cache_path().read_text())
        except (OSError, ValueError):
            _DIGESTS = {}
    return _DIGESTS


def _save_digest_cache(known: dict[str, str]) -> None:
    if not _DIRTY[0]:
        return
    try:
        from pipeline.core.io import write_json

        write_json(_digest_cache_path(), known)
        _DIRTY[0] = False
    except OSError:
        pass  # a cache: without it, only slower
