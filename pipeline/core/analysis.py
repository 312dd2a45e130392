"""A study's analysis plan (reports/<study>/plan.yaml), committed before it trains.

The plan says what the study is (its params: arms, seeds, budget, precision), how
it is answered (the estimator, the primary family and its correction, secondary
and exploratory analyses, any equivalence margin, the power of each primary test
at the threshold it faces) and what its arms are made of (the arm-code digests,
the pinned versions, the data, every run's fingerprint). Three things read it:

- `python -m pipeline.plans check` (and the test suite; pipeline.plans): while a
  registered plan's study is incomplete, the code and versions it names must not
  change, or the runs still to train would not be the runs it registered (the freeze);
- the report: "fixed before any result" only when the plan's last commit is an
  ancestor of the commit that added each of the study's records (git ancestry,
  not timestamps); otherwise it says the plan came after results, or that there
  is none;
- the train stage: a run of the plan's study whose arms, seeds or estimator
  differ from the plan says so first.
"""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from pipeline.core.config import Params, parse_params
from pipeline.core.schema import Contract, CorruptFile
from pipeline.core.record import record_path

FILE = "plan.yaml"


class Family(Contract):
    name: str
    correction: Literal["holm"] = "holm"
    hypotheses: list[str]
    # the family's size, where this study's hypotheses are part of another study's family
    # (the default study: the dropout-0.25 slice of the crossed study's primary family)
    size: int | None = None


class PowerRow(Contract):
    """The power of one planned test: a true difference `effect` (points) between arms
    of seed SDs `sd` (points; from `source`) with the plan's seeds, at `threshold`."""

    hypothesis: str
    test: Literal["difference", "equivalence"] = "difference"
    effect: float
    sd: tuple[float, float]
    source: str
    threshold: float | None = None  # filled by `python -m pipeline.plans fill`
    power: float | None = None


class AnalysisPlan(Contract):
    study: str
    status: Literal["registered", "withdrawn"] = "registered"
    withdrawn_because: str | None = None
    question: str
    params: dict  # the study's params.yaml keys
    history: str | None = None  # what was seen before this plan (settings chosen, seeds used)
    supersedes: str | None = None  # the earlier reports this study's report replaces, and why
    estimator: str
    alpha: float = 0.05
    primary: Family
    secondary: Family | None = None
    exploratory: list[str] = []
    sensitivity: list[str] = []
    equivalence_margin: float | None = None  # points
    power: list[PowerRow] = []
    # filled by `python -m pipeline.plans fill`, from the code and data as they are
    arms: list[str] = []
    seeds: list[int] = []
    precision: dict[str, str] = {}
    device: str = "cpu"
    code: dict[str, str] = {}  # "<model>+<regime>" -> arm-code digest
    versions: dict[str, str] = {}
    data: dict = {}  # the data id a fingerprint hashes
    fingerprints: dict[str, str] = {}  # "<arm> seed=<k>" -> fingerprint

    def parsed(self) -> Params:
        """The study's params: the study itself (its report is reports/<study>/)."""
        seeds = self.params.get("seeds")
        params = parse_params(self.params, tuple(seeds) if isinstance(seeds, list) else tuple(self.seeds))
        return dataclasses.replace(params, variant=())

    def runs(self) -> list[tuple[str, int]]:
        return [(a, s) for a in self.arms for s in self.seeds]


def read(path: str | Path) -> AnalysisPlan:
    from pipeline.core.schema import read_yaml

    path = Path(path)
    try:
        return AnalysisPlan.model_validate(read_yaml(path))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise CorruptFile(f"{path} is not an analysis plan ({'.'.join(map(str, err['loc']))}: {err['msg']})") \
            from None


def committed(root: Path) -> list[tuple[Path, AnalysisPlan]]:
    """Every plan under `root`'s reports/."""
    return [(p, read(p)) for p in sorted(Path(root).glob(f"reports/*/{FILE}"))]


def for_study(root: Path, name: str) -> tuple[Path, AnalysisPlan] | None:
    path = Path(root) / "reports" / name / FILE
    return (path, read(path)) if path.exists() else None


def recorded(root: Path, plan: AnalysisPlan) -> dict[str, Path]:
    """The plan's runs whose records are committed under reports/<study>/records/ with the planned fingerprint."""
    from pipeline.core.record import ArmRecord

    out = {}
    for arm, seed in plan.runs():
        path = record_path(Path(root) / "reports" / plan.study / "records", arm, seed)
        key = f"{arm} seed={seed}"
        try:
            if path.exists() and ArmRecord.peek(path).fingerprint == plan.fingerprints.get(key):
                out[key] = path
        except Exception:  # noqa: BLE001  unreadable: not recorded
            continue
    return out


def family_elsewhere(root: Path, plan: AnalysisPlan) -> str | None:
    """Where `plan`'s primary hypotheses belong to a larger family (primary.size), one line
    for the report: the registered p is that family's Holm p, held by the registered study
    whose runs include all of this plan's, and the p this study computes alone (over its
    own hypotheses) overstates. None where the plan's family is its own."""
    size = plan.primary.size if plan.primary else None
    own = len(plan.primary.hypotheses) if plan.primary else 0
    if not size or size <= own:
        return None
    mine = set(plan.fingerprints.values())
    where = f"a family of {size} hypotheses that no registered plan here holds"
    for path, other in committed(root):
        if other.study != plan.study and other.status == "registered" and mine <= set(other.fingerprints.values()):
            done, total = len(recorded(root, other)), len(other.fingerprints)
            where = (f"the primary family of {path.relative_to(root).as_posix()} ({size} hypotheses; "
                     + ("its report quotes it" if done == total else f"{done} of its {total} runs recorded so far")
                     + ")")
    return (f"the p this plan registers is the Holm-adjusted p of {where}; the p here is this study's own, "
            f"over {own} of them, and may be smaller than the registered p, never larger")


# --------------------------------------------------------------------------- precedence


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def last_commit(root: Path, path: Path) -> str | None:
    """The last commit that changed `path` (None: never committed, or edited since)."""
    rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    if _git(root, "status", "--porcelain", "--", rel):
        return None
    return _git(root, "log", "-1", "--format=%H", "--", rel) or None


def added_in(root: Path, path: Path) -> str | None:
    rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    out = _git(root, "log", "--diff-filter=A", "--format=%H", "--", rel)
    return out.splitlines()[-1] if out else None


def precedence(root: Path, study: str, runs: list[tuple[str, int]]) -> tuple[str, str]:
    """("fixed before any result" | "plan written after results" | "records not committed" |
    "no plan", why): whether the study's plan, as last changed, was committed before
    every record of `runs` (each committed under reports/<study>/records/)."""
    path = Path(root) / "reports" / study / FILE
    if not path.exists():
        return "no plan", f"no analysis plan at reports/{study}/{FILE}"
    commits, missing = {}, []
    for arm, seed in runs:
        rec = record_path(Path(root) / "reports" / study / "records", arm, seed)
        commit = added_in(root, rec) if rec.exists() else None
        if commit is None:
            missing.append(f"{arm} seed={seed}")
        else:
            commits[f"{arm} seed={seed}"] = commit
    plan_commit = last_commit(root, path)
    if plan_commit is None:
        if commits:
            return "plan written after results", f"reports/{study}/{FILE} is not committed as it stands"
        return "records not committed", f"neither reports/{study}/{FILE} as it stands nor any record is committed"
    later = [k for k, c in commits.items()
             if c == plan_commit or _git(root, "merge-base", "--is-ancestor", plan_commit, c) is None]
    if later:
        return "plan written after results", (f"the plan's last change ({plan_commit[:10]}) is not an ancestor of the "
                                              f"commits that added {len(later)} record(s), e.g. {later[0]}")
    if missing:
        return "records not committed", (f"{len(missing)} of {len(runs)} runs' records are not committed under "
                                         f"reports/{study}/records/ (e.g. {missing[0]}): that the plan came first "
                                         f"cannot be checked for them")
    return "fixed before any result", (f"the plan's last change ({plan_commit[:10]}) is an ancestor of the commit "
                                       f"that added each of the {len(runs)} records")


def differences(plan: AnalysisPlan, params: Params) -> list[str]:
    """How a run of the plan's study differs from the plan: arms, seeds, estimator."""
    out = []
    arms = [a.name for a in params.arms]
    if arms != plan.arms:
        out.append(f"arms {', '.join(arms)} (the plan: {', '.join(plan.arms)})")
    if list(params.seeds) != plan.seeds or params.seed_plan is not None:
        out.append(f"seeds {list(params.seeds)} (the plan: {plan.seeds})")
    k = params.report.mean_of_last
    if k != plan.parsed().report.mean_of_last:
        out.append(f"report.mean_of_last {k} (the plan: {plan.parsed().report.mean_of_last})")
    return out


def check_study(root: Path, params: Params) -> str | None:
    """The line a run of a planned study prints first when it is not what the plan registered."""
    found = for_study(root, params.study)
    if found is None:
        return None
    path, plan = found
    diff = differences(plan, params)
    if not diff:
        return None
    where = f"reports/{params.report_name}/" if params.variant else f"reports/{params.study}/ (as the study itself)"
    return (f"note: this run of {params.study} differs from its analysis plan reports/{params.study}/{FILE}: "
            f"{'; '.join(diff)}; its report goes to {where}")
