"""Where a result came from: the repository root, the code and its version, the DVC
experiment, the library versions."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

# `dvc exp run --queue/--temp` executes in a copy of the repository under this folder.
_EXP_TMP = os.path.join(".dvc", "tmp", "exps")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding pipeline/ and models/

# What a trained arm is made by: the job (pipeline/arm/job.py), its model's file,
# its augmentation regime's file, and every file of this project they import,
# followed through the imports (function-level ones too) but not into these
# modules, whose change cannot change what an arm computes:
ARM_ENTRY = "pipeline/arm/job.py"
NOT_FOLLOWED = {
    "pipeline.core.config": "an arm's resolved config values are part of its fingerprint",
    "pipeline.core.errors": "error messages only",
    "pipeline.core.jobs": "the containers a job's results travel in",
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


def _file_digest(f: Path, rel: str) -> str:
    return hashlib.sha256(_semantic_source(f.read_text(encoding="utf-8"), rel).encode()).hexdigest()


def _module_file(name: str, root: Path) -> Path | None:
    """The file of project module `name` under `root`, or None (not the project's)."""
    base = root.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(tree: ast.AST) -> list[str]:
    """Every module a file imports, wherever the import statement is; `from a import b`
    names both a and a.b (b may be a submodule)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


def code_files(entries, root: Path = PACKAGE_ROOT, skip=NOT_FOLLOWED) -> dict[str, str]:
    """{path relative to `root`: its digest} of the project files `entries` and every
    project module they import, transitively (packages' __init__ files included),
    except the modules in `skip`."""
    todo = [root / e for e in entries]
    out: dict[str, str] = {}
    while todo:
        f = todo.pop()
        rel = f.relative_to(root).as_posix()
        if rel in out:
            continue
        out[rel] = _file_digest(f, rel)
        for name in _imports(ast.parse(f.read_text(encoding="utf-8"), filename=rel)):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                if ".".join(parts[:i]) in skip:
                    break
                dep = _module_file(".".join(parts[:i]), root)
                if dep is not None:
                    todo.append(dep)
    return dict(sorted(out.items()))


def digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


@functools.cache
def arm_code(model: str, aug: str, root: Path = PACKAGE_ROOT) -> str:
    """The digest of the code an arm of `model` with augmentation `aug` runs, by
    content (comments and docstrings left out)."""
    return digest(code_files([ARM_ENTRY, f"models/{model}.py", f"pipeline/arm/regimes/{aug}.py"], root))


def code_digest(folders, root: Path = PACKAGE_ROOT) -> str:
    """The digest of every .py file in `folders` (folders or files, relative to `root`), by content."""
    files = [f for d in folders for f in ([root / d] if d.endswith(".py") else sorted((root / d).rglob("*.py")))
             if "__pycache__" not in f.parts]
    return digest({f.relative_to(root).as_posix(): _file_digest(f, f.relative_to(root).as_posix()) for f in files})


@dataclass(frozen=True)
class Provenance:
    """Where a study's results come from, as its runs and checkpoints record it."""

    code_version: str
    dvc_experiment: str
    data_name: str  # "CIFAR-10 (JPEG mirror)"
    data_sha256: str  # of the prepared arrays
    archive_sha256: str  # of the downloaded archive
    data_source: str  # data.url
    data_params: dict  # data.* of params.yaml
    n_train: int
    n_test: int
    examples: np.ndarray  # a few test images (uint8): the logged models' input example

    def example(self):
        import torch

        return torch.from_numpy(self.examples.copy())


_SECRET_KEYS = ("token", "secret", "password", "passwd", "pwd", "key", "sig", "signature", "auth", "credential",
                "session")


def public(text: str, root: Path | None = None) -> str:
    """`text` (a URI, a path, a message) as it may be published: a URI without its
    userinfo or the values of secret-looking query parameters, and paths under the
    repository root relative to it (elsewhere, under the home folder, from ~)."""
    import re
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    base = str((root or repo_root()).resolve())
    home = os.path.expanduser("~")

    def path(p: str) -> str:
        p = re.sub(rf"(?<![\w./-]){re.escape(base)}(/|(?![\w.-]))", lambda m: "" if m.group(1) else ".", p)
        return re.sub(rf"(?<![\w./-]){re.escape(home)}(?=/|$)", "~", p) if home not in ("/", "") else p

    def uri(m: re.Match) -> str:
        u = m.group(0)
        try:
            parts = urlsplit(u)
        except ValueError:
            return u
        if parts.scheme in ("sqlite", "file") and not parts.netloc:  # a local file: sqlite:////abs/path
            return f"{parts.scheme}:///{path('/' + parts.path.lstrip('/'))}"
        netloc = parts.netloc.rsplit("@", 1)[-1]
        query = urlencode([(k, "***" if any(s in k.lower() for s in _SECRET_KEYS) else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    return path(re.sub(r"\b[a-z][a-z0-9+.\-]*://[^\s'\"<>|)]+", uri, text))
