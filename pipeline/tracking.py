"""MLflow bookkeeping: one experiment per study, a parent run per pipeline
execution, a child run per arm x seed.

By default MLflow is embedded: a SQLite database and an artifact folder at the
repository root, addressed by absolute path so queued `dvc exp` runs (which
execute in copies of the repository) write to the same store. Set
MLFLOW_TRACKING_URI to use a team server instead.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from pipeline.provenance import repo_root

DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"


def tracking_uri(root: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = root or repo_root()
    return f"sqlite:///{root / DB_NAME}"


def _is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:///")


class Tracker:
    """Thin wrapper over MlflowClient: explicit run ids, no global active run."""

    def __init__(self, study: str, root: Path | None = None):
        import mlflow
        from filelock import FileLock
        from mlflow.tracking import MlflowClient

        root = root or repo_root()
        self.uri = tracking_uri(root)
        mlflow.set_tracking_uri(self.uri)
        # The first client to open an empty SQLite store (MlflowClient() does) runs
        # its migrations; parallel experiments must not race on that, nor on
        # creating the experiment.
        lock = FileLock(str(root / ".mlflow.lock")) if _is_embedded(self.uri) else _nolock()
        with lock:
            self.client = MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(study)
            if exp is None:
                location = (root / ARTIFACTS / study).as_uri() if _is_embedded(self.uri) else None
                self.experiment_id = self.client.create_experiment(study, artifact_location=location)
            else:
                self.experiment_id = exp.experiment_id
        self.reap()

    @classmethod
    def for_existing(cls, uri: str) -> "Tracker":
        """A client on the store that a finished train stage wrote to (no experiment set-up)."""
        import mlflow
        from mlflow.tracking import MlflowClient

        self = cls.__new__(cls)
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        self.experiment_id = None
        return self

    def reap(self) -> list[str]:
        """Mark KILLED every RUNNING run whose process on this host is gone (kill -9, a reboot)."""
        stale = []
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'",
                                           max_results=10_000):
            tags = run.data.tags
            if tags.get("host") == socket.gethostname() and not _alive(tags.get("pid")):
                self.client.set_terminated(run.info.run_id, "KILLED")
                stale.append(run.info.run_id)
        return stale

    def resume(self, run_id: str) -> bool:
        """Continue an interrupted run (same id, RUNNING again). False if it is gone."""
        try:
            self.client.get_run(run_id)
        except Exception:
            return False
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {"pid": os.getpid(), "host": socket.gethostname(), "resumed": "true"})
        return True

    def start(self, name: str, tags: dict[str, Any], parent: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()}
        tags.update(pid=str(os.getpid()), host=socket.gethostname())
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "null" if v is None else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0)
                                               for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | os.PathLike, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
