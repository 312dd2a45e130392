"""Analysis plans (reports/<study>/plan.yaml, pipeline.core.analysis) from the command line.

    python -m pipeline.plans fill reports/dropout/plan.yaml   # arms, code, versions, data, fingerprints, power
    python -m pipeline.plans check                            # the freeze: exit 1 if code a plan needs moved
    python -m pipeline.plans status                           # each plan: runs recorded, precedence
    python -m pipeline.plans run reports/dropout/plan.yaml    # train what is left; --report once complete

Write a plan's question, params, families, margin and power inputs by hand, `fill`
it on the machine with the data, commit it, and only then train the study.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core import analysis
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import write_text
from pipeline.core.provenance import library_versions, repo_root


def fingerprints_now(plan: analysis.AnalysisPlan, code_root: Path | None = None) -> dict[str, str]:
    """Each planned run's fingerprint as the code (at `code_root`) and libraries here would give it."""
    from pipeline.core.provenance import arm_code, library_versions
    from pipeline.core.record import fingerprint_of
    from pipeline.train.plan import Identity

    params = plan.parsed()
    code = (lambda m, a: arm_code(m, a, code_root)) if code_root else arm_code
    identity = Identity(data_id=plan.data, versions=library_versions(), device_type=plan.device, code=code)
    out = {}
    for arm in params.arms:
        cfg = arm.train.model_copy(update={"precision": plan.precision.get(arm.name, arm.train.precision)})
        for seed in plan.seeds:
            out[f"{arm.name} seed={seed}"] = fingerprint_of(identity.of(cfg, seed))
    return out


def frozen_problems(root: Path, plan: analysis.AnalysisPlan, code_root: Path | None = None) -> list[str]:
    """Why this code (at `code_root`, default this package's) would not train the runs
    the plan registered (empty: it would, or the study is complete or withdrawn, and
    nothing is frozen)."""
    from pipeline.arms import PINNED
    from pipeline.core.provenance import arm_code

    if plan.status != "registered":
        return []
    left = [k for k in plan.fingerprints if k not in analysis.recorded(root, plan)]
    if not left:
        return []
    problems = []
    for name, digest in plan.code.items():
        model, aug = name.split("+")
        now = arm_code(model, aug, code_root) if code_root else arm_code(model, aug)
        if now != digest:
            problems.append(f"the code {name} arms run has digest {now[:12]}, the plan registered {digest[:12]}")
    versions = library_versions(tuple(plan.versions) or PINNED)
    for lib, v in plan.versions.items():
        if versions.get(lib) != v:
            problems.append(f"{lib} is {versions.get(lib)}, the plan registered {v}")
    now = fingerprints_now(plan, code_root)
    moved = [k for k in left if now.get(k) != plan.fingerprints[k]]
    if moved and not problems:
        problems.append(f"{len(moved)} fingerprint(s) moved although code and versions did not (the config a "
                        f"fingerprint hashes changed), e.g. {moved[0]}")
    if problems:
        problems.append(f"{len(left)} of its {len(plan.fingerprints)} runs are still to train")
    return problems


def fill(path: Path, data: Path) -> analysis.AnalysisPlan:
    """The plan at `path` with what follows from its params, this code and the data."""
    from pipeline.arms import PINNED, digests, study_jobs
    from pipeline.core import stats

    plan = analysis.read(path)
    params = plan.parsed()
    if params.study != plan.study:
        raise PipelineError(f"{path}: its params name the study {params.study!r}, the plan {plan.study!r}")
    if params.seed_plan is not None:
        raise PipelineError(f"{path}: a plan lists its seeds; seeds on demand stop by the data")
    jobs = study_jobs(params, data)
    power = []
    for row in plan.power:
        # Holm's first step: what the smallest p of the family must pass
        threshold = plan.alpha / (plan.primary.size or len(plan.primary.hypotheses))
        n = len(params.seeds)
        if row.test == "equivalence":
            if plan.equivalence_margin is None:
                raise PipelineError(f"{path}: an equivalence power row needs equivalence_margin")
            p = stats._tost_power(row.sd[0] / 100, row.sd[1] / 100, n, n, plan.equivalence_margin / 100, threshold,
                                  20_000)
        else:
            p = stats.welch_power_sds(row.sd[0], row.sd[1], n, row.effect, threshold)
        power.append(row.model_copy(update={"threshold": round(threshold, 6), "power": round(p, 3)}))
    from pipeline.train.stage import load_data

    _, _, data_id = load_data(data, params)
    return plan.model_copy(update={
        "arms": [a.name for a in params.arms], "seeds": list(params.seeds),
        "precision": {j.arm: j.cfg.precision for j in jobs}, "device": jobs[0].device.split(":")[0],
        "code": digests(params), "versions": library_versions(PINNED), "data": data_id,
        "fingerprints": {j.label: j.fp for j in jobs}, "power": power})


def run_study(root: Path, path: Path, data: Path, report: bool) -> None:
    """The plan's study through the stages, outside DVC (its outputs under
    .cache/plans/<study>/): runs already recorded or in the arm store are not trained again,
    an interrupted one resumes, and with `report` the evaluation and reports/<study>/ follow."""
    from pipeline.evaluate.stage import main as evaluate
    from pipeline.report.stage import main as write_report
    from pipeline.train.stage import main as train

    plan = analysis.read(path)
    work = root / ".cache" / "plans" / plan.study
    work.mkdir(parents=True, exist_ok=True)
    params = work / "params.yaml"
    write_text(params, yaml_text(plan.params))
    common = ["--params", str(params), "--data", str(data), "--runs", str(work / "runs")]
    train([*common, "--metrics", str(work / "train.json"), "--curves", str(work / "curves.csv"), "--no-mlflow",
           "--no-progress"])
    if report:
        evaluate([*common, "--out", str(work / "evaluation"), "--metrics", str(work / "evaluate.json"),
                  "--headline", str(work / "study.json")])
        write_report([*common, "--evaluation", str(work / "evaluation"), "--out", str(root / "reports")])


def yaml_text(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def dump(plan: analysis.AnalysisPlan) -> str:
    import yaml

    header = (f"# The analysis plan of the study {plan.study}, committed before it trains (pipeline.core.analysis).\n"
              f"# Filled by `python -m pipeline.plans fill`; CI freezes the code and versions it names until\n"
              f"# every run's record is committed under records/, or the plan is withdrawn.\n")
    return header + yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False, width=100, allow_unicode=True)


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.plans", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fill", help="fill a plan in from its params, this code and the data")
    p.add_argument("plan", type=Path)
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    sub.add_parser("check", help="exit 1 if a registered, incomplete study's code or versions moved")
    sub.add_parser("status", help="each plan: runs recorded, and whether it came before them")
    p = sub.add_parser("run", help="train the plan's study as registered: what its records and the arm store lack")
    p.add_argument("plan", type=Path)
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--report", action="store_true", help="then evaluate it and write reports/<study>/")
    args = ap.parse_args(argv)
    root = repo_root()
    if args.command == "run":
        run_study(root, args.plan, args.data, args.report)
        return
    if args.command == "fill":
        plan = fill(args.plan, args.data)
        write_text(args.plan, dump(plan))
        print(f"{args.plan}: {len(plan.arms)} arms x {len(plan.seeds)} seeds; power: "
              + "; ".join(f"{r.hypothesis} {r.power:.0%} at {r.threshold:.4g}" for r in plan.power))
        return
    failed = False
    for path, plan in analysis.committed(root):
        rel = path.relative_to(root)
        if args.command == "check":
            problems = frozen_problems(root, plan)
            if problems:
                failed = True
                print(f"{rel}: frozen, and the code moved: {'; '.join(problems)}. Put it back, or withdraw the plan "
                      f"(status: withdrawn, withdrawn_because: why) in its own commit", file=sys.stderr)
            else:
                print(f"{rel}: ok")
        else:
            done = len(analysis.recorded(root, plan))
            word, why = analysis.precedence(root, plan.study, plan.runs())
            print(f"{rel}: {plan.status}, {done} of {len(plan.fingerprints)} runs recorded; {word} ({why})")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
