"""dvc.yaml's code dependencies are what each stage imports: every project file a
stage's command runs (followed through its imports, those inside functions too, and
the modules loaded by name: every model file, every augmentation regime) is a
dependency, and nothing else is, so an edit reruns exactly the stages it can change."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.core.provenance import code_files
from tests.conftest import REPO

# loaded by name at run time, where the import statements cannot show it
DYNAMIC = {"models/__init__.py": "models", "pipeline/arm/augment.py": "pipeline/arm/regimes"}


def imported(entry: str) -> set[str]:
    files = set(code_files([entry], REPO, skip={}))
    for trigger, folder in DYNAMIC.items():
        if trigger in files:
            files |= {p.relative_to(REPO).as_posix() for p in (REPO / folder).glob("*.py")}
    return files


def _py(path: str) -> set[str]:
    p = REPO / path
    if p.is_file():
        return {path}
    return {f.relative_to(REPO).as_posix() for f in p.rglob("*.py") if "__pycache__" not in f.parts}


def derived(files: set[str]) -> list[str]:
    """The fewest dependencies that name exactly `files`: a folder where every file in it is imported."""
    out = set(files)
    for folder in sorted({str(Path(f).parent) for f in files}, key=lambda d: -d.count("/")):
        while folder not in (".", "pipeline") and _py(folder) <= set().union(*map(_py, out)):
            out = {d for d in out if not d.startswith(folder + "/")} | {folder}
            folder = str(Path(folder).parent)
    return sorted(out)


def test_every_stage_depends_on_the_code_it_runs_and_on_nothing_else():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    wrong = {}
    for name, stage in stages.items():
        module = re.match(r"python -m ([\w.]+)", stage["cmd"]).group(1)
        entry = module.replace(".", "/")
        entry = f"{entry}/__main__.py" if (REPO / entry).is_dir() else f"{entry}.py"
        files = imported(entry)
        code = [d for d in stage["deps"] if d.startswith(("pipeline", "models"))]
        covered = set().union(*map(_py, code)) if code else set()
        if covered != files:
            wrong[name] = {"missing": sorted(files - covered), "extra": sorted(covered - files),
                           "dvc.yaml should list": derived(files)}
    assert not wrong, wrong


def test_the_data_stages_do_not_depend_on_training_code():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("download", "untar"):
        deps = [d for d in stages[name]["deps"] if d.startswith(("pipeline", "models"))]
        assert not [d for d in deps if d.startswith(("models", "pipeline/arm", "pipeline/train", "pipeline/core/config",
                                                       "pipeline/core/stats"))], (name, deps)
