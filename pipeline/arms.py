"""The arm store from the command line: what it holds, what to prune, the records
to commit, and the digest of the code an arm runs.

    python -m pipeline.arms list                     # arm, seed, studies, size, last used
    python -m pipeline.arms prune --unused-days 30   # --dry-run to see what would go
    python -m pipeline.arms export                   # finished runs' records -> reports/<study>/records/
    python -m pipeline.arms digest                   # the arm-code digest and the pinned versions

`export` is safe while the study trains: it copies only finished runs' records,
each whole, and leaves those already there. Commit them (`git add reports/`):
on a machine without the weights, a study whose records are committed is
evaluated and reported from them without training.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from pipeline.core.config import Params, load_params
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import atomic_path, clone_file, sha256_file
from pipeline.core.provenance import ARM_LIBRARIES, arm_code, library_versions, repo_root
from pipeline.core.record import FILE as RECORD, ArmRecord, record_path
from pipeline.train.armstore import ArmStore, Entry, store_path

PINNED = ARM_LIBRARIES + ("pillow",)  # what a fingerprint hashes, and what decodes the data


def study_jobs(params: Params, data: Path):
    """Every arm x seed of `params` (seeds on demand: its maximum), as this machine would train it."""
    from pipeline.train.plan import Identity, jobs_for
    from pipeline.train.stage import devices, load_data

    device, found = devices(params)
    _, _, data_id = load_data(Path(data), params)
    identity = Identity(data_id=data_id, versions=library_versions(), device_type=device.split(":")[0])
    seeds = range(params.seed_plan.max) if params.seed_plan else params.seeds
    return jobs_for(params, seeds, identity, device, found.bf16)


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def list_entries(store: ArmStore) -> list[str]:
    entries = store.entries()
    lines = [f"arm store {store.root}: {len(entries)} finished run(s), {_size(sum(e.bytes for e in entries))}"]
    if entries:
        lines.append(f"{'fingerprint':<14}{'arm':<32}{'seed':>6}  {'size':>10}  {'last used':<26}studies")
        for e in sorted(entries, key=lambda e: (e.arm, e.seed)):
            arm = e.arm or "(earlier version)"
            lines.append(f"{e.fingerprint[:12]:<14}{arm:<32}{e.seed:>6}  {_size(e.bytes):>10}  "
                         f"{e.last_used:<26}{', '.join(sorted(e.used)) or '-'}")
    return lines


def named(root: Path, params_path: Path) -> set[tuple[str, int]]:
    """(resolved config, seed) of every run the repository's params.yaml and committed
    plans name, as this machine would train them (no data needed)."""
    from pipeline.core.config import resolve_precision
    from pipeline.train.stage import devices

    from pipeline.core import analysis

    sources = [load_params(params_path)] if params_path.exists() else []
    sources += [plan.parsed() for _, plan in analysis.committed(root)]
    out = set()
    for params in sources:
        device, found = devices(params)
        seeds = range(params.seed_plan.max) if params.seed_plan else params.seeds
        for arm in params.arms:
            cfg = arm.train.model_copy(update={"precision": resolve_precision(arm.train.precision,
                                                                              device.split(":")[0], bool(found.bf16))})
            out |= {(cfg.model_dump_json(), s) for s in seeds}
    return out


def prune(store: ArmStore, keep: set[tuple[str, int]], days: float, now: dt.datetime, dry_run: bool) -> list[Entry]:
    """The entries not used for `days` days and not in `keep`; removed unless `dry_run`."""
    gone = []
    for e in store.entries():
        last = dt.datetime.fromisoformat(e.last_used)
        if (now - last).total_seconds() < days * 86400:
            continue
        try:
            meta = ArmRecord.peek(store.folder(e.fingerprint) / "done" / RECORD)
            if (meta.config.model_dump_json(), meta.seed) in keep:
                continue
        except Exception:  # noqa: BLE001  an entry of an earlier version, without a record: named by nothing
            pass
        gone.append(e)
        if not dry_run:
            store.remove(e.fingerprint)
    return gone


def export(store: ArmStore, params: Params, data: Path, out: Path) -> tuple[int, int, int]:
    """Copy the records of the study's finished runs into `out` (reports/<study>/records/);
    returns (copied, already there, runs in the study)."""
    copied = same = 0
    jobs = study_jobs(params, data)
    for job in jobs:
        entry = store.done(job.fp)
        if entry is None:
            continue
        src, dest = entry[0] / RECORD, record_path(out, job.arm, job.seed)
        if dest.exists() and sha256_file(dest) == sha256_file(src):
            same += 1
            continue
        ArmRecord.load(src, job.fp)  # whole and bound, before it is committed anywhere
        with atomic_path(dest) as tmp:
            clone_file(src, tmp)
            tmp.chmod(0o644)
        copied += 1
    return copied, same, len(jobs)


def digests(params: Params) -> dict[str, str]:
    """{model+regime: the digest of the code its arms run}, for the study's arms."""
    return {f"{a.train.model}+{a.train.aug}": arm_code(a.train.model, a.train.aug) for a in params.arms}


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.arms", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="what the arm store holds")
    p = sub.add_parser("prune", help="remove runs not used for N days that params.yaml and no plan names")
    p.add_argument("--unused-days", type=float, required=True)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("export", help="copy the study's finished records into reports/<study>/records/")
    p.add_argument("--params", default="params.yaml", help="the study's params (a plan.yaml: its params)")
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--out", default="reports")
    p = sub.add_parser("digest", help="the digest of the code the study's arms run, and the pinned versions")
    p.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)

    root = repo_root()
    store = ArmStore(store_path(root))
    if args.command == "list":
        print("\n".join(list_entries(store)))
    elif args.command == "prune":
        if args.unused_days < 0:
            raise PipelineError(f"--unused-days {args.unused_days:g}: a number of days, 0 or more")
        gone = prune(store, named(root, Path(args.params)), args.unused_days, dt.datetime.now(dt.timezone.utc),
                     args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(gone)} run(s), {_size(sum(e.bytes for e in gone))}: not used for {args.unused_days:g} "
              f"days and named neither by {args.params} nor by a committed plan")
        for e in gone:
            print(f"  {e.fingerprint[:12]} {e.arm} seed={e.seed} (last used {e.last_used})")
    elif args.command == "export":
        params = _params(Path(args.params))
        out = Path(args.out) / params.report_name / "records"
        copied, same, total = export(store, params, Path(args.data), out)
        print(f"{out}: {copied} record(s) copied, {same} already there; {copied + same} of the study's {total} "
              f"runs finished. Commit them: git add {out}")
    else:
        params = _params(Path(args.params))
        for name, d in digests(params).items():
            print(f"arm code {name}: {d}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in library_versions(PINNED).items()))


def _params(path: Path) -> Params:
    """params.yaml, or a study's plan (its params section)."""
    if path.name == "plan.yaml":
        from pipeline.core import analysis

        return analysis.read(path).parsed()
    return load_params(path)


if __name__ == "__main__":
    sys.exit(main())
