"""Analysis plans: the freeze that keeps a registered study's code and versions put,
the precedence a report may claim (git ancestry), and a run that strays from its plan."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import plans
from pipeline.core import analysis
from tests.conftest import REPO, env, run


def test_no_registered_study_is_silently_retrained():
    """The freeze, on this repository: while a registered plan's study is incomplete,
    the arm code and pinned versions it names are the ones here."""
    registered = analysis.committed(REPO)
    assert {p.parent.name for p, _ in registered} >= {"dropout", "precision", "simple_cnn"}
    for path, plan in registered:
        assert plans.frozen_problems(REPO, plan) == [], path


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for top in ("pipeline", "models"):
        shutil.copytree(REPO / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    for plan in REPO.glob("reports/*/plan.yaml"):
        (root / plan.parent.relative_to(REPO)).mkdir(parents=True)
        shutil.copy2(plan, root / plan.relative_to(REPO))
    return root


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.plans", "check"], cwd=root,
                          env=env({"PYTHONPATH": str(root)}), capture_output=True, text=True, timeout=300)


def test_the_freeze_fails_on_a_change_of_the_training_step_and_not_of_storage(tmp_path):
    """CI's freeze (`python -m pipeline.plans check`) on a copy of this repository: it
    passes as it is, and after an edit of storage code; it fails, naming the digest,
    after one character of the training step changes."""
    root = _copy_tree(tmp_path)
    ok = _check(root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    storage = root / "pipeline" / "core" / "record.py"
    storage.write_text(storage.read_text() + "\nSTORAGE_EDIT = 1\n")
    assert _check(root).returncode == 0
    loop = root / "pipeline" / "arm" / "loop.py"
    text = loop.read_text()
    assert "loss_sum += loss.detach() * len(y)" in text
    loop.write_text(text.replace("loss_sum += loss.detach() * len(y)", "loss_sum += loss.detach() * len(y) * 1"))
    bad = _check(root)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "frozen, and the code moved: the code simple_cnn+" in bad.stderr and "withdraw the plan" in bad.stderr


def test_the_freeze_names_a_version_that_moved_and_lifts_for_a_withdrawn_plan():
    _, plan = analysis.for_study(REPO, "dropout")
    moved = plan.model_copy(update={"versions": {**plan.versions, "numpy": "0.0.1"}})
    problems = plans.frozen_problems(REPO, moved)
    assert any("numpy is" in p and "the plan registered 0.0.1" in p for p in problems), problems
    withdrawn = moved.model_copy(update={"status": "withdrawn", "withdrawn_because": "a test"})
    assert plans.frozen_problems(REPO, withdrawn) == []


def _git_repo(tmp_path: Path) -> Path:
    root = tmp_path / "g"
    (root / "reports" / "s" / "records" / "a").mkdir(parents=True)
    run("git init -q", root)
    return root


def _commit(root: Path, *files: str, msg: str = "x") -> None:
    for f in files:
        p = root / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{f}\n{msg}\n")
    run(f"git add -A && git commit -qm {msg}", root)


def test_fixed_before_any_result_only_when_the_plan_is_an_ancestor_of_every_record(tmp_path):
    runs = [("a", 0), ("a", 1)]
    root = _git_repo(tmp_path)
    assert analysis.precedence(root, "s", runs)[0] == "no plan"
    _commit(root, "reports/s/plan.yaml", msg="plan")
    assert analysis.precedence(root, "s", runs)[0] == "records not committed"
    _commit(root, "reports/s/records/a/seed=0.npz", msg="r0")
    assert analysis.precedence(root, "s", runs)[0] == "records not committed"
    _commit(root, "reports/s/records/a/seed=1.npz", msg="r1")
    word, why = analysis.precedence(root, "s", runs)
    assert word == "fixed before any result", why
    # the plan edited after the records: its last change no longer precedes them
    _commit(root, "reports/s/plan.yaml", msg="edit")
    assert analysis.precedence(root, "s", runs)[0] == "plan written after results"


@pytest.mark.parametrize("order", ["same commit", "record first"])
def test_a_record_that_does_not_descend_from_the_plan_refuses_the_claim(tmp_path, order):
    runs = [("a", 0)]
    root = _git_repo(tmp_path)
    if order == "same commit":
        _commit(root, "reports/s/plan.yaml", "reports/s/records/a/seed=0.npz", msg="both")
    else:
        _commit(root, "reports/s/records/a/seed=0.npz", msg="r0")
        _commit(root, "reports/s/plan.yaml", msg="plan")
    word, why = analysis.precedence(root, "s", runs)
    assert word == "plan written after results", why


def test_a_run_that_differs_from_its_plan_says_so():
    from pipeline.core.config import parse_params

    _, plan = analysis.for_study(REPO, "dropout")
    assert analysis.differences(plan, plan.parsed()) == []
    other = parse_params({**plan.params, "seeds": [0, 1]})
    assert analysis.differences(plan, other) == ["seeds [0, 1] (the plan: " + str(plan.seeds) + ")"]
    k3 = parse_params({**plan.params, "report": {**plan.params["report"], "mean_of_last": 3}},
                      tuple(plan.seeds))
    assert analysis.differences(plan, k3) == ["report.mean_of_last 3 (the plan: 1)"]
    fewer = parse_params({**plan.params, "aug": "standard"}, tuple(plan.seeds))
    assert analysis.differences(plan, fewer)[0].startswith("arms aug=standard,dropout=0.0")


def test_a_registered_study_runs_as_registered_and_reports_as_itself(tmp_path, prepared):
    """`python -m pipeline.plans run`: the plan's params through the stages; a second run
    trains nothing (the arm store), and --report writes reports/<study>/, the study's own
    folder, not a variant's."""
    import sys

    import yaml

    root = tmp_path / "repo"
    for top in ("pipeline", "models"):
        shutil.copytree(REPO / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    params = {"study": "tiny", "preset": "simple_cnn", "seeds": [3, 4], "epochs": 1, "batch_size": 32,
              "device": "cpu"}
    (root / "reports" / "tiny").mkdir(parents=True)
    (root / "reports" / "tiny" / "plan.yaml").write_text(yaml.safe_dump({
        "study": "tiny", "question": "q", "params": params, "estimator": "the last checkpoint's test accuracy",
        "primary": {"name": "aug", "hypotheses": ["aug=standard vs aug=none"]}, "seeds": [3, 4]}))
    cmd = [sys.executable, "-m", "pipeline.plans", "run", "reports/tiny/plan.yaml", "--data", str(prepared)]
    e = env({"PYTHONPATH": str(root)})
    first = subprocess.run(cmd, cwd=root, env=e, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("epoch 1/1") == 4
    again = subprocess.run([*cmd, "--report"], cwd=root, env=e, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "epoch 1/1" not in again.stdout and again.stdout.count("restored from the arm cache") == 4
    assert (root / "reports" / "tiny" / "report.md").exists()
    assert not [p for p in (root / "reports").iterdir() if p.name != "tiny"]


def test_a_slice_of_a_larger_family_says_its_p_is_not_the_registered_one(tmp_path):
    """The default study's plan registers the crossed family's Holm p for its one
    hypothesis: its report says that its own p may be smaller, and where the registered
    one is (the plan whose runs include its runs), until then and after."""
    from pipeline.report import build
    from pipeline.report.render import render_markdown
    from pipeline.report.stage import answer
    from tests.test_report import fake_inputs

    for study in ("simple_cnn", "dropout", "precision"):
        (tmp_path / "reports" / study).mkdir(parents=True)
        shutil.copy2(REPO / "reports" / study / "plan.yaml", tmp_path / "reports" / study / "plan.yaml")
    _, plan = analysis.for_study(tmp_path, "simple_cnn")
    line = analysis.family_elsewhere(tmp_path, plan)
    assert "primary family of reports/dropout/plan.yaml (3 hypotheses; 0 of its 72 runs recorded so far)" in line
    assert "over 1 of them, and may be smaller than the registered p" in line
    assert analysis.family_elsewhere(tmp_path, analysis.for_study(tmp_path, "dropout")[1]) is None
    assert analysis.family_elsewhere(tmp_path, analysis.for_study(tmp_path, "precision")[1]) is None
    shutil.rmtree(tmp_path / "reports" / "dropout")  # no plan holds the family
    assert "a family of 3 hypotheses that no registered plan here holds" in analysis.family_elsewhere(tmp_path, plan)
    inp = fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]})
    inp.family = line
    assert f"Provisional: {line}." in render_markdown(build.build_report(inp))
    assert f"provisional: {line}" in answer(inp, Path("r.html")).splitlines()
