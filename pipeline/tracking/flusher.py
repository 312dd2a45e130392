"""Sends the tracking journal (pipeline.tracking.journal) to the MLflow store.

    python -m pipeline.tracking.flusher --root R [--uri U] [--watch PID]

One flusher per journal at a time (a file lock). It sends every pending event
of every run made for this store, oldest run first, and records how far each
run got, so an interrupted flush repeats nothing. A store that is slow, locked
or gone is retried with backoff while the watched process lives, and for a
minute after; then the flusher stops, leaving the events for the next one. A
run whose id the store no longer knows (the store was replaced) is sent again
from its first event: for a run with events still to send, always; for every run
of the journal, when the flush is asked to `verify` (`python -m pipeline.tracking
flush` does), since a store replaced after everything was sent has nothing pending.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.io import pid_alive, sha256_file, write_json
from pipeline.tracking.journal import ARTIFACTS, DB_NAME, JOURNAL

SHA256_TAG = "sha256:"  # + an artifact's path in its run: the file's sha256 when it was logged
LINGER_S = 3.0  # idle time before exiting once the watched process is gone
GIVE_UP_S = 60.0  # how long an unreachable store is retried after that
POLL_S = 0.5


class StoreUnavailable(Exception):
    pass


class Flusher:
    def __init__(self, root: Path, uri: str, verify: bool = False):
        self.root, self.uri, self.verify = Path(root), uri, verify
        self.dir = self.root / JOURNAL
        self.tag = hashlib.sha256(uri.encode()).hexdigest()[:16]
        self._client = None
        self._experiments: dict[str, str] = {}
        self._checked: set[str] = set()

    # --- bookkeeping

    def _sent_path(self, key: str) -> Path:
        return self.dir / "runs" / key / f"sent-{self.tag}.json"

    def _sent(self, key: str) -> dict:
        try:
            return json.loads(self._sent_path(key).read_text())
        except (OSError, ValueError):
            return {"run_id": None, "lines": 0}

    def _events(self, key: str) -> list[dict]:
        out = []
        try:
            raw = (self.dir / "runs" / key / "events.jsonl").read_bytes()
        except OSError:
            return out
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut short by a kill: skipped, but counted
                out.append({"do": "skip"})
        if raw and not raw.endswith(b"\n"):
            out.pop()  # still being written
        return out

    def _ours(self) -> list[str]:
        """Keys of this store's runs, oldest first."""
        runs = self.dir / "runs"
        if not runs.is_dir():
            return []
        out = []
        for d in sorted(runs.iterdir()):
            events = self._events(d.name)
            if events and events[0].get("uri") == self.uri:
                out.append(d.name)
        return out

    def pending(self) -> list[str]:
        """Keys of this store's runs with unsent events, oldest first."""
        return [k for k in self._ours() if len(self._events(k)) > self._sent(k)["lines"]]

    # --- MLflow

    @property
    def client(self):
        if self._client is None:
            import mlflow
            from mlflow.tracking import MlflowClient

            mlflow.set_tracking_uri(self.uri)
            self._client = MlflowClient(self.uri)
        return self._client

    def _experiment(self, name: str) -> str:
        if name not in self._experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:///") and self.uri.endswith(DB_NAME):
                    location = (Path(self.uri[len("sqlite:///"):]).parent / ARTIFACTS / name).as_uri()
                exp_id = self.client.create_experiment(name, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            # open on the runs table: a model-training experiment, not a GenAI one
            self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
            self._experiments[name] = exp_id
        return self._experiments[name]

    def _reachable(self) -> bool:
        try:
            self.client.search_experiments(max_results=1)
            return True
        except Exception:
            return False

    def _run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException as exc:
            # only the store's own answer: a proxy's 404 page (ENDPOINT_NOT_FOUND) must not
            # make every run look lost and be sent again
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def _known(self, key: str) -> dict:
        """`key`'s progress, from its first event again if the store lost its run
        (checked once per flusher, on first use)."""
        sent = self._sent(key)
        if sent["run_id"] is not None and key not in self._checked:
            if not self._run_exists(sent["run_id"]):  # the store was replaced: send the run again
                print(f"run {sent['run_id']} is not in {self.uri}; sending {key} again from its start", flush=True)
                sent = {"run_id": None, "lines": 0}
                write_json(self._sent_path(key), sent)
        self._checked.add(key)
        return sent

    def send(self, key: str, ids: dict[str, str]) -> None:
        """Send `key`'s unsent events; `ids` maps keys to run ids (parents first)."""
        sent = self._known(key)
        events = self._events(key)
        run_id = sent["run_id"]
        for i in range(sent["lines"], len(events)):
            for attempt in range(3):
                try:
                    run_id = self._apply(key, events[i], run_id, ids)
                    break
                except Exception as exc:
                    if _store_fault(exc) or not self._reachable():
                        raise
                    # the store works but refuses this event: after a few tries, skip it
                    if attempt == 2:
                        print(f"skipped event {i + 1} ({events[i].get('do')}) of {key}: {_reason(exc)}",
                              flush=True)
            sent = {"run_id": run_id, "lines": i + 1}
            write_json(self._sent_path(key), sent)
        ids[key] = run_id

    def _apply(self, key: str, ev: dict, run_id: str | None, ids: dict[str, str]) -> str | None:
        from mlflow.entities import Metric, Param, RunTag

        do = ev.get("do")
        c = self.client
        if do == "start":
            tags = dict(ev["tags"])
            if ev.get("parent"):
                tags["mlflow.parentRunId"] = self._id_of(ev["parent"], ids)
            tags["tracking_key"] = key
            tags.setdefault("mlflow.source.name", f"dvc repro (stage {ev.get('stage', 'train')})")
            run = c.create_run(self._experiment(ev["experiment"]), run_name=ev["name"], tags=tags,
                               start_time=int(ev["t"] * 1000))
            return run.info.run_id
        if run_id is None:  # an event of a run whose start was lost
            return None
        if do == "resume":
            c.update_run(run_id, status="RUNNING")
            tags = dict(ev["tags"])
            if ev.get("parent"):
                tags["mlflow.parentRunId"] = self._id_of(ev["parent"], ids)
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        elif do == "params":
            items = [Param(k, v[:6000]) for k, v in ev["params"].items()]
            existing = c.get_run(run_id).data.params
            items = [p for p in items if p.key not in existing]  # a replayed or restored run
            for i in range(0, len(items), 100):  # MLflow's batch limit
                c.log_batch(run_id, params=items[i:i + 100])
        elif do == "metrics":
            c.log_batch(run_id, metrics=[Metric(k, v, ev["ms"], ev["step"]) for k, v in ev["metrics"].items()])
        elif do == "tags":
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in ev["tags"].items()])
        elif do == "artifact":
            src = self.dir / ev["file"]
            c.log_artifact(run_id, str(src), ev.get("folder"))
            if "sha256" in ev:  # what the file was when logged: `flush` checks the store's copy against it
                c.set_tag(run_id, f"{SHA256_TAG}{ev.get('folder') or ''}/{src.name}".replace(":/", ":"), ev["sha256"])
        elif do == "model":
            from pipeline.tracking.models import log_checkpoint_model

            # a journal written before models were named by checkpoint: "last_model"
            log_checkpoint_model(run_id, self.dir / ev.get("file", ev.get("checkpoint", "")),
                                 ev.get("which") or ev["name"].removesuffix("_model"))
        elif do == "dataset":
            _log_dataset(c, run_id, ev)
        elif do == "register":
            from pipeline.tracking.models import register

            register(run_id, ev.get("which") or ev["model"].removesuffix("_model"), ev["registered_name"])
        elif do == "end":
            c.set_terminated(run_id, ev["status"])
        return run_id

    def _id_of(self, key: str, ids: dict[str, str]) -> str:
        """The run id of `key` (a parent), sending it first if the store lacks it."""
        if ids.get(key) is None:
            if self._known(key)["run_id"] is None:
                self.send(key, ids)
            else:
                ids[key] = self._sent(key)["run_id"]
        return ids[key]

    def changed_artifacts(self) -> list[str]:
        """Of every run this journal sent to a store on this machine, the artifacts whose
        copy there no longer has the sha256 they were logged with: one line each."""
        out = []
        for key in self._ours():
            run_id = self._sent(key)["run_id"]
            if run_id is None or not self._run_exists(run_id):
                continue
            run = self.client.get_run(run_id)
            uri = urlparse(run.info.artifact_uri)
            if uri.scheme not in ("", "file"):
                continue  # a remote artifact store: not read back here
            for tag, digest in run.data.tags.items():
                path = Path(unquote(uri.path)) / tag[len(SHA256_TAG):]
                if tag.startswith(SHA256_TAG) and (not path.is_file() or sha256_file(path) != digest):
                    out.append(f"{path} (run {run.info.run_name}, {run_id}) changed after it was logged: its "
                               f"sha256 differs from the one logged with it")
        return out

    def flush_once(self) -> int:
        """Send everything pending now; the number of runs that had events."""
        if self.verify:
            for key in self._ours():  # a run the store lost is pending again (checked once per key)
                self._known(key)
        keys = self.pending()
        ids: dict[str, str] = {}
        for key in keys:
            self.send(key, ids)
        return len(keys)


def _log_dataset(client, run_id: str, ev: dict) -> None:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local file is a local file
        source = resolve_dataset_source(ev["source"])
    ds = MetaDataset(source=source, name=ev["name"], digest=ev["digest"][:36])
    entity = ds._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", ev["context"])])])


# SQLite errors that say the store, not the event, is at fault: a file removed or
# replaced under an open connection still answers reads but refuses every write
# ("attempt to write a readonly database"), so a read is no proof that it works
_STORE_FAULTS = ("readonly database", "database is locked", "disk i/o error", "unable to open database",
                 "database disk image is malformed", "no such table")


def _store_fault(exc: BaseException) -> bool:
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None).lower()
    return any(f in text for f in _STORE_FAULTS)


_REFUSED = ("401", "403", "unauthorized", "unauthenticated", "permission_denied", "forbidden")


def refused(exc: BaseException) -> str | None:
    """One line when the tracking server refused this client's credentials (retrying
    would not help), else None."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None).lower()
    if not any(word in text for word in _REFUSED):
        return None
    return ("the tracking server refused these credentials (missing or wrong): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account of its basic-auth app (never in the URI); the records wait in "
            "the journal")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def run(root: Path, uri: str, watch: int | None, give_up_s: float = GIVE_UP_S, linger_s: float = LINGER_S,
        wait: bool = False, verify: bool = False) -> bool:
    """Flush until nothing is pending and the watched process has ended; True when
    everything was sent. With `wait`, first wait for a running flusher to finish;
    with `verify`, also send again every run the store no longer has."""
    from filelock import FileLock, Timeout

    f = Flusher(root, uri, verify=verify)
    f.dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(f.dir / "flusher.lock"))
    while True:
        try:
            lock.acquire(timeout=give_up_s + 60 if wait else 0)
        except Timeout:
            return wait is False  # another flusher has it; it lingers and will see our events
        ok = _flush_while_needed(f, lock, watch, give_up_s, linger_s)
        # events that came after the last look, while another flusher gave way to this one
        if not ok or not f.pending():
            return ok


def _flush_while_needed(f: "Flusher", lock, watch: int | None, give_up_s: float, linger_s: float) -> bool:
    try:
        idle_since, failing_since, wait = time.monotonic(), None, 1.0
        _status(f, None)
        while True:
            try:
                sent = f.flush_once()
                if failing_since is not None:
                    _status(f, None)
                failing_since, wait = None, 1.0
            except Exception as exc:  # a store that is locked, slow or gone
                f._client, f._experiments, f._checked = None, {}, set()
                now = time.monotonic()
                failing_since = failing_since or now
                if refused(exc):
                    _status(f, refused(exc))
                    print(f"giving up: {refused(exc)}", flush=True)
                    return False
                _status(f, _reason(exc))
                watched = watch is not None and pid_alive(watch)
                if not watched and now - failing_since > give_up_s:
                    print(f"giving up for now: {_reason(exc)}", flush=True)
                    return False
                time.sleep(wait)
                wait = min(wait * 2, 30.0)
                continue
            if sent:
                idle_since = time.monotonic()
            elif not (watch is not None and pid_alive(watch)) and time.monotonic() - idle_since > linger_s:
                return True
            time.sleep(POLL_S)
    finally:
        lock.release()


def _status(f: Flusher, error: str | None) -> None:
    try:
        write_json(f.dir / "status.json", {"uri": f.uri, "error": error, "pending": len(f.pending()) if error else 0,
                                           "pid": os.getpid(), "time": time.time()})
    except OSError:
        pass


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--uri", required=True)
    ap.add_argument("--watch", type=int, default=None, help="keep flushing while this process lives")
    args = ap.parse_args(argv)
    ok = run(Path(args.root), args.uri, args.watch)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
