"""The tracking journal: what the stages want MLflow to hold, written first to disk.

A stage never talks to MLflow itself. It appends events (a run started, params,
metrics, an artifact, a model, the run ended) to the journal, one JSON line per
event in `.cache/tracking/runs/<key>/events.jsonl` at the repository root (also
from inside queued DVC experiments), and a separate process, the flusher
(pipeline.tracking.flusher), sends them to the tracking store. So:

- an epoch's state is on disk before anything is sent, and a slow, locked or
  missing store never stops training;
- what could not be sent stays in the journal and goes out on the next run;
- a store that was removed or replaced gets every run again from the journal;
- no stage pays for importing MLflow.

A run is named by a key made here, sortable by creation time; the flusher maps
keys to the store's run ids.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.core.io import clone_file, sha256_file
from pipeline.core.provenance import public, repo_root

DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"
JOURNAL = Path(".cache") / "tracking"


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the embedded store at the repository root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or repo_root()) / DB_NAME}"


def new_key() -> str:
    return f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}"


class Journal:
    """Appends tracking events; cheap, local, and never fails because of MLflow."""

    def __init__(self, root: Path | None = None, uri: str | None = None):
        self.root = Path(root or repo_root())
        self.dir = self.root / JOURNAL
        self.uri = uri or tracking_uri(self.root)

    def _append(self, key: str, event: dict) -> None:
        folder = self.dir / "runs" / key
        folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"t": time.time(), **event}, default=_plain) + "\n"
        path = folder / "events.jsonl"
        with open(path, "ab") as f:
            if f.tell() and not _ends_with_newline(path):
                line = "\n" + line  # a writer killed mid-line: start afresh
            f.write(line.encode())

    # --- runs

    def start(self, experiment: str, name: str, *, tags: dict[str, Any], parent: str | None = None,
              description: str | None = None, key: str | None = None) -> str:
        key = key or new_key()
        tags = {k: public(str(v)) for k, v in tags.items()}
        tags.update(pid=str(os.getpid()), host=socket.gethostname())
        if description:
            tags["mlflow.note.content"] = public(description)
        self._append(key, {"do": "start", "uri": self.uri, "experiment": experiment, "name": name,
                           "parent": parent, "tags": tags})
        return key

    def resume(self, key: str, parent: str | None) -> None:
        """A killed run goes on, under the parent of the execution that finishes it."""
        self._append(key, {"do": "resume", "parent": parent,
                           "tags": {"pid": str(os.getpid()), "host": socket.gethostname(), "resumed": "true"}})

    def end(self, key: str, status: str = "FINISHED") -> None:
        self._append(key, {"do": "end", "status": status})

    # --- data

    def params(self, key: str, params: dict[str, Any]) -> None:
        self._append(key, {"do": "params", "params": {k: "null" if v is None else public(str(v))
                                                      for k, v in params.items()}})

    def metrics(self, key: str, metrics: dict[str, float], step: int | None = None) -> None:
        self._append(key, {"do": "metrics", "step": step or 0,
                           "ms": int(time.time() * 1000), "metrics": {k: float(v) for k, v in metrics.items()}})

    def tags(self, key: str, tags: dict[str, Any]) -> None:
        self._append(key, {"do": "tags", "tags": {k: public(str(v)) for k, v in tags.items()}})

    def _keep(self, key: str, path: str | os.PathLike) -> dict:
        """A copy of `path` in the journal (it outlives a queued experiment's workspace,
        and no later edit of the original reaches it), and its sha256."""
        path = Path(path)
        blob = self.dir / "runs" / key / "files" / secrets.token_hex(4) / path.name
        blob.parent.mkdir(parents=True)
        clone_file(path, blob)
        return {"file": str(blob.relative_to(self.dir)), "sha256": sha256_file(blob)}

    def artifact(self, key: str, path: str | os.PathLike, folder: str | None = None) -> None:
        """A file to log (its sha256 goes with it, as a tag of the run)."""
        self._append(key, {"do": "artifact", **self._keep(key, path), "folder": folder})

    def model(self, key: str, checkpoint: str | os.PathLike, which: str) -> None:
        """A checkpoint (`which`: last or best) to log as an MLflow model (built by the
        flusher, which alone loads torch for it)."""
        self._append(key, {"do": "model", **self._keep(key, checkpoint), "which": which})

    def dataset(self, key: str, *, name: str, digest: str, source: str, context: str, rows: int) -> None:
        self._append(key, {"do": "dataset", "name": name, "digest": digest, "source": public(source),
                           "context": context, "rows": rows})

    def register(self, key: str, which: str, registered_name: str) -> None:
        """Register the run's logged model of checkpoint `which` in the Model Registry."""
        self._append(key, {"do": "register", "which": which, "registered_name": registered_name})

    # --- which run holds an arm x seed (by fingerprint)

    def arm_run(self, fp: str) -> dict | None:
        """{"key", "open"}: the run that trains (open) or trained the arm with fingerprint `fp`."""
        try:
            return json.loads((self.dir / "arms" / f"{fp}.json").read_text())
        except (OSError, ValueError):
            return None

    def set_arm_run(self, fp: str, key: str, open: bool) -> None:
        from pipeline.core.io import write_json

        write_json(self.dir / "arms" / f"{fp}.json", {"key": key, "open": open})

    def reap(self) -> list[str]:
        """End as KILLED every run of this host left running by a process that is gone
        (kill -9, a reboot); a resumed run is opened again by `resume`."""
        from pipeline.core.io import pid_alive

        gone = []
        runs = self.dir / "runs"
        if not runs.is_dir():
            return gone
        host = socket.gethostname()
        for d in sorted(runs.iterdir()):
            owner, ended = None, False
            try:
                lines = (d / "events.jsonl").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("do") in ("start", "resume"):
                    owner, ended = ev.get("tags", {}), False
                elif ev.get("do") == "end":
                    ended = True
            if owner and not ended and owner.get("host") == host and not pid_alive(int(owner.get("pid", 0))):
                self.end(d.name, "KILLED")
                gone.append(d.name)
        return gone

    # --- the flusher

    def flush_in_background(self) -> None:
        """Make sure a flusher runs (it lingers while this process lives)."""
        if os.environ.get("CIFAR_ABLATE_TRACKING") == "off":
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "flusher.log", "ab")
        try:
            subprocess.Popen([sys.executable, "-m", "pipeline.tracking.flusher", "--root", str(self.root),
                              "--uri", self.uri, "--watch", str(os.getpid())],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                             cwd=self.root, env=_flusher_env())
        finally:
            log.close()

    def warn_if_unavailable(self) -> None:
        """The status line, as a warning on stderr, when records wait for the store."""
        line = self.status_line()
        if line:
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def status_line(self) -> str | None:
        """One line when the store has been unreachable and records wait in the journal."""
        try:
            status = json.loads((self.dir / "status.json").read_text())
        except (OSError, ValueError):
            return None
        if status.get("uri") != self.uri or not status.get("error"):
            return None
        return public(f"tracking store {self.uri} unavailable ({status['error']}); {status.get('pending', 'its')} "
                      f"record(s) kept in {self.dir} and sent at the next run (or `python -m pipeline.tracking flush`)")


def _flusher_env() -> dict:
    env = dict(os.environ)
    # the flusher retries with its own backoff, and says so; MLflow's client alone
    # would retry a dead server for minutes before anyone heard of it
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON-able")
