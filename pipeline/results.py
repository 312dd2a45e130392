"""`make results`: every experiment's answer, a block per study, in 100 columns.

Reads what `dvc exp show --json` lists (each experiment's params and
metrics/study.json) and prints, per study, its experiments one below the other:
each arm's tested accuracy in percent, and each tested hypothesis (an arm against
the baseline, or a crossed study's effects and interactions) with its difference
in points, its adjusted p and the answer in a word.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

WIDTH = 100
ALPHA = 0.05


def experiments(shown: list) -> list[tuple[str, dict, dict]]:
    """(name, params, metrics) of every experiment and the workspace, from `dvc exp show --json`."""
    out = []

    def one(rev: dict, name: str) -> None:
        data = rev.get("data") or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        metrics = ((data.get("metrics") or {}).get("metrics/study.json") or {}).get("data") or {}
        if metrics:
            out.append((name, params, metrics))

    for commit in shown:
        one(commit, commit.get("name") or commit.get("rev", "?")[:7])
        for group in commit.get("experiments") or []:
            for rev in group.get("revs") or []:
                one(rev, rev.get("name") or rev.get("rev", "?")[:7])
    return out


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def _answer(delta: float | None, p: float | None) -> str:
    if p is None:
        return "not tested"
    if p >= ALPHA:
        return "no significant difference"
    return "helped" if (delta or 0) > 0 else "hurt"


def block(name: str, params: dict, metrics: dict) -> list[str]:
    """One experiment: a header, each arm's accuracy, each tested hypothesis."""
    study = params.get("study") or params.get("preset") or "?"
    n = metrics.get("n_seeds", "?")
    lines = [f"{study} [{name}], {n} seeds"[:WIDTH]]
    names = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in metrics if "/" in k))
    arms = [a for a in names if f"{a}/test_acc" in metrics]
    tested = [h for h in names if f"{h}/p_adj" in metrics]
    side = min(48, max((len(h) for h in arms + tested), default=10))
    lines.append(f"  {'arm / hypothesis':<{side}} {'acc %':>6} {'Δ pts':>7} {'p (adj)':>8}  answer")
    for a in arms:
        lines.append(f"  {a[:side]:<{side}} {metrics[f'{a}/test_acc']:>6.1f}")
    for h in tested:
        delta, p = metrics.get(f"{h}/delta"), metrics.get(f"{h}/p_adj")
        answer = _answer(delta, p)
        if f"{h}/p_equiv" in metrics:
            answer += ", equivalent" if metrics[f"{h}/p_equiv"] < ALPHA else ", equivalence not shown"
        row = f"  {h[:side]:<{side}} {'':>6} {delta:>+7.1f} {_p(p):>8}  {answer}"
        lines.append(row[:WIDTH])
    return lines


def render(shown: list) -> str:
    """Every study's block, studies in the order first seen."""
    by_study: dict[str, list[list[str]]] = {}
    for name, params, metrics in experiments(shown):
        study = params.get("study") or params.get("preset") or "?"
        by_study.setdefault(study, []).append(block(name, params, metrics))
    if not by_study:
        return "no experiment has metrics/study.json yet: run `dvc repro` or `dvc exp run`"
    return "\n\n".join("\n".join(line for b in blocks for line in b + [""]).rstrip() for blocks in by_study.values())


def main() -> None:
    shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if shown.returncode != 0:
        print(f"error: dvc exp show failed: {' '.join(shown.stderr.split())[:300]}", file=sys.stderr)
        raise SystemExit(2)
    text = re.sub(r"^[^\[{]*", "", shown.stdout, count=1)  # anything DVC prints before the JSON
    print(render(json.loads(text or "[]")))


if __name__ == "__main__":
    main()
