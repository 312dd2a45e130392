"""python -m pipeline.tracking flush [--timeout S]: send the journal to the tracking store now
(and again, whole, any run the store no longer has), then check that every file
logged to a store on this machine is as it was logged.

python -m pipeline.tracking urls [--base URL]: each study's runs table in the MLflow UI."""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.core.errors import cli
from pipeline.core.provenance import repo_root
from pipeline.tracking import flusher
from pipeline.tracking.journal import Journal


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.tracking", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["flush", "urls"])
    ap.add_argument("--base", default="http://127.0.0.1:5000", help="urls: where the MLflow UI serves")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to keep retrying an unreachable store")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the flusher has its own backoff
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    journal = Journal(repo_root())
    if args.command == "urls":
        for line in study_urls(journal.uri, args.base):
            print(line)
        return
    ok = flusher.run(journal.root, journal.uri, watch=None, give_up_s=args.timeout, linger_s=0.0, wait=True,
                     verify=True)
    if not ok:
        print(journal.status_line() or "error: the tracking store is unavailable", file=sys.stderr)
        raise SystemExit(1)
    print(f"tracking journal sent to {journal.uri}")
    for line in flusher.Flusher(journal.root, journal.uri).changed_artifacts():
        print(f"warning: {line}", file=sys.stderr)


def study_urls(uri: str, base: str) -> list[str]:
    """One line per study: its runs table in the MLflow UI's model-training view (without
    `workflowType` MLflow 3 opens its GenAI pages)."""
    from mlflow.tracking import MlflowClient

    return [f"{e.name}: {base}/#/experiments/{e.experiment_id}?workflowType=machine_learning"
            for e in MlflowClient(uri).search_experiments() if e.name != "Default"]


if __name__ == "__main__":
    main()
