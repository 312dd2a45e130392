"""MLflow, a publisher of what the stages wrote.

The stages' own files are the record: runs/study.json names a study's arm x seed
runs by fingerprint; each run's folder in runs/ (a view of the arm store, or of
the run's committed record) holds its record, its history and, where the weights
are on this machine, its checkpoints; evaluation/summary.json and
reports/<study>/ hold the rest. Publishing copies them into MLflow, and may be
repeated at any time to the same end:

- one MLflow run per (study, arm fingerprint), found by its tags; one parent run
  per study (its arms and seeds), found by its tag `study_key`;
- what a run holds is tagged `published` with the digest of what was sent, set
  last, once MLflow has acknowledged the rest: a run with that digest is left
  alone, one published in part is completed (MLflow keeps one copy of a metric
  logged again with the same step and time, and params only once);
- the parent ends FINISHED once every child is published;
- a registered model gets one version per run, however often it is asked for;
- a store that is down, locked or refuses costs nothing but time: nothing is
  lost (the files are the record), the stage says so in one line, and the next
  stage or `python -m pipeline.tracking publish` publishes what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.contracts import CHECKPOINTS, run_dir
from pipeline.core.io import sha256_file
from pipeline.core.provenance import public, repo_root
from pipeline.core.study import StudyRecord, StudyRun

DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"
PUBLISHED = "published"  # tag: the digest of what the run holds, set last
VIEW = "answer"  # the runs table's shared view (experiment tag mlflow.sharedViewState.answer): the answer's columns
CHECKSUMS = "checksums"  # tag: {artifact path in the run: its sha256 when logged}, one JSON value
SOURCE = "dvc repro (stage {stage})"
_BATCH = 100  # MLflow's limit of params or tags per log_batch


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the embedded store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / DB_NAME}"


def enabled() -> bool:
    """Whether the stages publish as they end (CIFAR_ABLATE_TRACKING=off leaves it to
    `python -m pipeline.tracking publish`)."""
    return os.environ.get("CIFAR_ABLATE_TRACKING", "on") != "off"


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate stage adds: the parent's headline (metrics, tags) and
    summary.json, and each run's numbers (by fingerprint)."""

    metrics: dict[str, float]
    tags: dict[str, str]
    summary: Path
    runs: dict[str, dict[str, float]]


class Unpublished(Exception):
    """The store could not take what was to be published; the message is one line."""


def mlflow_name(arm: str) -> str:
    """An arm's name as MLflow takes it in a metric or tag name (no '=', ',' or '@')."""
    return arm.replace("=", ":").replace(",", " ").replace("@", " at ")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def publish(study: StudyRecord, runs: Path, **parts) -> None:
    """Publish `study` as a stage ends (Publisher.publish): a store that cannot take it
    is one line on stderr, and costs nothing else. Not with CIFAR_ABLATE_TRACKING=off,
    nor for a study trained with --no-mlflow."""
    import sys

    if not enabled() or not study.published:
        return
    try:
        for line in Publisher().publish(study, runs, **parts):
            print(line, flush=True)
    except Unpublished as exc:
        print(f"warning: {exc}", file=sys.stderr, flush=True)


class Publisher:
    def __init__(self, root: Path | None = None, uri: str | None = None):
        self.root = Path(root or repo_root())
        self.uri = uri or tracking_uri(self.root)
        self._client = None
        self._experiments: dict[str, str] = {}

    # --- the store

    @property
    def client(self):
        if self._client is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a dead server: one line, not minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            import logging

            import mlflow
            from mlflow.tracking import MlflowClient

            # what fails is said in one line (Unpublished), not in MLflow's logged tracebacks; and
            # the logged models' pickle module is this project's own safe one (tracking.checkpoint_pickle)
            for name in ("mlflow.store", "mlflow.pytorch"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
            mlflow.set_tracking_uri(self.uri)
            self._client = MlflowClient(self.uri)
        return self._client

    def _lock(self):
        """SQLite takes one writer at a time: publishers of one embedded store (queued
        experiments, say) take turns rather than fail on "database is locked"."""
        if not self.uri.startswith("sqlite:///"):
            return nullcontext()
        from filelock import FileLock

        db = Path(self.uri[len("sqlite:///"):])
        return FileLock(str(db.parent / f"{db.name}-publish.lock"), timeout=600)

    def experiment(self, name: str) -> str:
        if name not in self._experiments:
            c = self.client
            exp = c.get_experiment_by_name(name)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:///") and self.uri.endswith(DB_NAME):
                    location = (Path(self.uri[len("sqlite:///"):]).resolve().parent / ARTIFACTS / name).as_uri()
                exp_id = c.create_experiment(name, artifact_location=location)
            else:
                exp_id = exp.experiment_id
                if exp.lifecycle_stage == "deleted":  # deleted in the UI: its study is published again
                    c.restore_experiment(exp_id)
            # open on the runs table: a model-training experiment, not a GenAI one
            c.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
            self._experiments[name] = exp_id
        return self._experiments[name]

    def _find(self, exp_id: str, **tags: str):
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([exp_id], filter_string=where, max_results=2, order_by=["start_time ASC"])
        return runs[0] if runs else None

    def _tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, public(str(v))[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, tags=items[i:i + _BATCH], synchronous=True)

    def _params(self, run, params: dict) -> None:
        from mlflow.entities import Param

        have = run.data.params
        items = [Param(k, "null" if v is None else public(str(v))[:6000]) for k, v in params.items() if k not in have]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run.info.run_id, params=items[i:i + _BATCH], synchronous=True)

    def _metrics(self, run_id: str, metrics: dict, step: int, ms: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), ms, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000], synchronous=True)

    def _set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value, synchronous=True)  # acknowledged, even with async logging on

    def _artifacts(self, run, files: list[tuple[Path, str | None]]) -> None:
        """Log each file (into its folder), with its sha256 in the run's one checksums tag."""
        sums = json.loads(run.data.tags.get(CHECKSUMS, "{}"))
        for path, folder in files:
            self.client.log_artifact(run.info.run_id, str(path), folder)
            sums[f"{folder}/{path.name}" if folder else path.name] = sha256_file(path)
        self._set_tag(run.info.run_id, CHECKSUMS, json.dumps(sums, sort_keys=True))

    # --- a study

    def publish(self, study: StudyRecord, runs: Path, *, evaluation: Evaluation | None = None,
                report: tuple[Path, list[Path]] | None = None, register: tuple[str, str, int] | None = None,
                status: str = "FINISHED") -> list[str]:
        """Publish what the store lacks of `study` (runs/study.json, its runs' folders in
        `runs`) and, given, of its evaluation and its report ((folder, files)); register
        `register` ((name, arm, seed): that run's last checkpoint) once; end the parent with
        `status` (RUNNING: the study trains on, and `study` holds the runs finished so far).
        Returns lines to print; raises Unpublished."""
        try:
            with self._lock():
                return self._publish(study, runs, evaluation, report, register, status)
        except Unpublished:
            raise
        except Exception as exc:
            raise Unpublished(self.failure(exc, study)) from exc

    def failure(self, exc: BaseException, study: StudyRecord | None = None) -> str:
        what = f"study {study.study}" if study is not None else "the study"
        return public(f"MLflow at {self.uri} did not take {what} ({refused(exc) or _reason(exc)}); nothing is lost: "
                      f"the next stage, or `python -m pipeline.tracking publish`, publishes it")

    def _publish(self, study, runs, evaluation, report, register, status) -> list[str]:
        exp = self.experiment(study.study)
        parent = self._parent(exp, study)
        done = True
        for r in study.runs:
            done &= self._child(exp, parent.info.run_id, study, r, runs)
        pid = parent.info.run_id
        lines = []
        if evaluation is not None:
            e = evaluation
            key = _digest([e.metrics, e.tags, e.runs, sha256_file(e.summary)])
            if parent.data.tags.get(f"{PUBLISHED}.evaluation") != key:
                ms = int(time.time() * 1000)  # later than any earlier evaluation's: MLflow shows the latest
                trained = {r.fingerprint: r.trained_at for r in study.runs}
                for fp, metrics in e.runs.items():
                    self._metrics(self._find(exp, fingerprint=fp, trained_at=trained[fp]).info.run_id, metrics, 0, ms)
                self._metrics(pid, e.metrics, 0, ms)
                self._tags(pid, e.tags)
                self._artifacts(self.client.get_run(pid), [(e.summary, "evaluation")])
                self._answer_view(exp, e.metrics)
                self._set_tag(pid, f"{PUBLISHED}.evaluation", key)
        if report is not None:
            folder, files = report
            key = _digest({str(f.relative_to(folder)): sha256_file(f) for f in files})
            if parent.data.tags.get(f"{PUBLISHED}.report") != key:
                self._artifacts(self.client.get_run(pid), [
                    (f, "report" if f.parent == folder else f"report/{f.parent.relative_to(folder)}") for f in files])
                self._set_tag(pid, f"{PUBLISHED}.report", key)
            if self.uri.startswith(("http://", "https://")):
                lines.append(f"MLflow: {view_url(public(self.uri.rstrip('/')), exp)}")
            else:
                lines.append(f"MLflow: {view_url('http://127.0.0.1:5000', exp)} (`make mlflow-ui` serves it)")
        if register:
            lines += self._register(exp, pid, study, *register)
        if status == "RUNNING" and parent.info.status != "RUNNING":  # a killed study that trains again
            self.client.update_run(pid, status="RUNNING")
        elif status != "RUNNING" and done and parent.info.status != status:  # it ends when its children have
            self.client.set_terminated(pid, status)
        return lines

    def _answer_view(self, exp: str, metrics: dict[str, float]) -> None:
        """The runs table opens (view_url) on each study's answer: its arms' accuracy, and each
        tested difference's delta and adjusted p, as columns (those of earlier studies of
        the experiment kept), runs by time, each study's arm x seed runs under its parent."""
        tag = f"mlflow.sharedViewState.{VIEW}"
        try:
            old = json.loads(self.client.get_experiment(exp).tags.get(tag, "{}")).get("selectedColumns", [])
        except ValueError:
            old = []
        new = [f"metrics.`{m}`" for m in metrics if m.endswith(("/test_acc", "/delta", "/p_adj", "/p_equiv"))]
        columns = list(dict.fromkeys(old + new + ["metrics.`final_test_acc`"]))
        self.client.set_experiment_tag(exp, tag, json.dumps({
            "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}))

    def _parent(self, exp: str, study: StudyRecord):
        run = self._find(exp, study_key=study.study_key)
        facts = study.facts
        if run is None:
            tags = {"study_key": study.study_key, "git_commit": facts.git_commit, "dvc_experiment":
                    facts.dvc_experiment, "data_sha256": facts.data_sha256, "preset": facts.preset,
                    "arms": ", ".join(study.arms), "host": socket.gethostname(),
                    "mlflow.source.name": SOURCE.format(stage="train"), "mlflow.source.type": "LOCAL",
                    "mlflow.note.content": f"Ablation study {study.study} (preset {facts.preset}): arms "
                                           f"{', '.join(study.arms)}; seeds {study.seeds}; data {facts.data_name} "
                                           f"({facts.n_train:,} train / {facts.n_test:,} test images)."}
            run = self.client.create_run(self.experiment(study.study), run_name=f"{study.study} {facts.dvc_experiment}",
                                         tags={k: public(str(v)) for k, v in tags.items()})
        pid = run.info.run_id
        self._params(run, {"preset": facts.preset, "seeds": study.seeds, **facts.data_params})
        self._tags(pid, {"seeds": study.seeds, "seeds_reason": study.seeds_reason})
        return self.client.get_run(pid)

    def _child(self, exp: str, parent: str, study: StudyRecord, r: StudyRun, runs: Path) -> bool:
        """Publish one arm x seed; True when it is published whole."""
        from pipeline.core.record import FILE as RECORD, ArmRecord

        folder = run_dir(runs, r.arm, r.seed)
        weights = [(which, folder / file) for which, file in CHECKPOINTS.items() if (folder / file).is_file()]
        key = _digest([r.fingerprint, sha256_file(folder / RECORD), [w for w, _ in weights]])
        # one run per training: a run trained again (--retrain) is a run of its own
        run = self._find(exp, fingerprint=r.fingerprint, trained_at=r.trained_at)
        if run is not None and run.data.tags.get(PUBLISHED) == key:
            return True
        meta = ArmRecord.load(folder / RECORD, r.fingerprint).meta
        facts = study.facts
        axes = dict(part.split("=", 1) for part in r.arm.split(",") if "=" in part)
        if run is None:
            tags = {"arm": r.arm, "seed": r.seed, **{f"axis.{k}": v for k, v in axes.items()},
                    "fingerprint": r.fingerprint, "trained_at": r.trained_at, "mlflow.parentRunId": parent,
                    "mlflow.source.name": SOURCE.format(stage="train"), "mlflow.source.type": "LOCAL"}
            run = self.client.create_run(exp, run_name=f"{r.arm} seed={r.seed}", start_time=_ms(meta.trained_at),
                                         tags={k: public(str(v)) for k, v in tags.items()})
        rid = run.info.run_id
        self._tags(rid, {"git_commit": meta.code_version, "machine": meta.machine, "data_sha256": facts.data_sha256,
                         "dvc_experiment": facts.dvc_experiment})
        if weights or "model_id.last" not in run.data.tags:  # a run logged with its models keeps saying so
            self._tags(rid, {"weights": "on this machine" if weights else "not on this machine: only its committed "
                                                                          "record (metrics, no logged model)"})
        self._params(run, {**_flat(meta.config.model_dump()), "seed": r.seed, "arm": r.arm, **facts.data_params})
        if not run.inputs.dataset_inputs:
            _log_datasets(self.client, rid, facts)
        ms = _ms(meta.trained_at)
        for row in meta.history:
            self._metrics(rid, {k: v for k, v in row.model_dump().items() if k != "epoch"}, row.epoch, ms)
        from pipeline.core.contracts import RunMetrics

        self._metrics(rid, {f"final_{k}": v for k, v in RunMetrics.from_history(meta.history).named().items()}, 0, ms)
        run = self.client.get_run(rid)
        if CHECKSUMS not in run.data.tags:
            self._artifacts(run, [(folder / "history.csv", None), (folder / RECORD, None)])
        for which, path in weights:
            if f"model_id.{which}" not in run.data.tags:
                from pipeline.tracking.models import log_checkpoint_model

                log_checkpoint_model(rid, path, which)
        self.client.set_terminated(rid, "FINISHED", end_time=ms)
        self._set_tag(rid, PUBLISHED, key)  # last: the run is whole
        return True

    def _register(self, exp: str, parent: str, study: StudyRecord, name: str, arm: str, seed: int) -> list[str]:
        """Run (arm, seed)'s last checkpoint as a version of model `name`, once."""
        r = next(r for r in study.runs if r.arm == arm and r.seed == seed)
        run = self._find(exp, fingerprint=r.fingerprint, trained_at=r.trained_at)
        model_id = run.data.tags.get("model_id.last") if run is not None else None
        if model_id is None:
            return [f"warning: {arm} seed={seed} has no logged model to register (its weights are not on this "
                    f"machine)"]
        versions = self.client.search_model_versions(f"name = '{name}'")
        if any(v.run_id == run.info.run_id for v in versions):
            return []
        import mlflow

        mlflow.register_model(f"models:/{model_id}", name)
        self._set_tag(parent, "registered_model", f"{name}: {arm} seed={seed}")
        return [f"registered {arm} seed={seed} (last checkpoint) as model '{name}'"]

    # --- what the store holds

    def changed_artifacts(self) -> list[str]:
        """Of every run in a store on this machine, the artifacts whose copy there no
        longer has the sha256 they were logged with: one line each."""
        out = []
        for exp in self.client.search_experiments():
            for run in self.client.search_runs([exp.experiment_id], max_results=5000):
                uri = urlparse(run.info.artifact_uri)
                if uri.scheme not in ("", "file") or CHECKSUMS not in run.data.tags:
                    continue  # a remote artifact store: not read back here
                for name, digest in json.loads(run.data.tags[CHECKSUMS]).items():
                    path = Path(unquote(uri.path)) / name
                    if not path.is_file() or sha256_file(path) != digest:
                        out.append(public(f"{path} (run {run.info.run_name}, {run.info.run_id}) changed after it "
                                          f"was logged: its sha256 differs from the one logged with it"))
        return out


def view_url(base: str, experiment_id: str) -> str:
    """An experiment's runs table on the answer's columns (a shared view: MLflow 3.15+;
    the /runs page, and no sort or filter in the address, or MLflow ignores the view)."""
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW}"


def _log_datasets(client, run_id: str, facts) -> None:
    """One dataset per split (MLflow keeps one input per name and digest): the archive's checksum."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local file is a local file
        source = resolve_dataset_source(facts.data_source)
    inputs = []
    for context in ("train", "test"):
        ds = MetaDataset(source=source, name=f"{facts.data_name} {context}", digest=facts.archive_sha256[:36])
        inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    client.log_inputs(run_id, datasets=inputs)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_REFUSED = ("401", "403", "unauthorized", "unauthenticated", "permission_denied", "forbidden")


def refused(exc: BaseException) -> str | None:
    """One line when the tracking server refused this client's credentials (retrying
    would not help), else None."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None).lower()
    if not any(word in text for word in _REFUSED):
        return None
    return ("the tracking server refused these credentials (missing or wrong): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account of its basic-auth app (never in the URI)")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
