"""What a study leaves in MLflow's embedded store, beyond the runs' layout: records
that are their own copies, with their checksums; the winning arm's model
registered once, however often it is published; and the study's answer as the
parent run's description."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from pipeline.core.contracts import run_dir
from pipeline.core.study import StudyRecord
from pipeline.evaluate.contracts import StudySummary as Summary
from tests.conftest import assert_same_predictions, publish_study


@pytest.fixture(scope="module")
def store(study_files):
    """The session's small study (2 arms x 2 seeds), published to its store."""
    import mlflow

    uri = f"sqlite:///{study_files['db']}"
    publish_study(study_files["two"], study_files["db"])
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("report-test")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    files = study_files["two"]
    record = StudyRecord.model_validate_json((files["runs"] / "study.json").read_text())
    return {"client": client, "parent": parent, "children": children, "files": files, "record": record,
            "db": study_files["db"]}


@pytest.mark.slow
def test_each_logged_record_is_its_own_copy_with_its_checksum(store):
    """The logged model's weights and the run's artifacts share no file with runs/ or
    the arm cache; each artifact's sha256 is a tag of its run; and the model loads as
    the network that predicts what the checkpoint predicts."""
    import json

    import mlflow

    checked = 0
    for run in store["children"]:
        tags = run.data.tags
        folder = run_dir(store["files"]["runs"], tags["arm"], int(tags["seed"]))
        model = mlflow.get_logged_model(tags["model_id.last"])
        weights = Path(unquote(urlparse(model.artifact_location).path)) / "data" / "model.pth"
        assert not os.path.samefile(weights, folder / "model.pt") and os.stat(weights).st_nlink == 1
        history = Path(unquote(urlparse(run.info.artifact_uri).path)) / "history.csv"
        assert not os.path.samefile(history, folder / "history.csv")
        assert json.loads(tags["checksums"])["history.csv"] == hashlib.sha256(history.read_bytes()).hexdigest()
        assert_same_predictions(mlflow.pytorch.load_model(f"models:/{model.model_id}"), folder / "model.pt",
                                store["files"]["data"])
        checked += 1
    assert checked == 4


@pytest.mark.slow
def test_the_winning_arm_is_registered_as_asked(store):
    """report.register_model: the arm with the best mean test accuracy, its median seed's
    last checkpoint, as version 1 of the named model; it loads and predicts as that checkpoint."""
    import mlflow

    client = store["client"]
    summary = Summary.model_validate_json((store["files"]["evaluation"] / "summary.json").read_text())
    last = summary.checkpoints["last"]
    best = max(store["record"].arms, key=lambda a: last.arms[a].test_acc.mean)
    versions = client.search_model_versions("name = 'report-test-winner'")
    assert [str(v.version) for v in versions] == ["1"]
    run = client.get_run(versions[0].run_id)
    assert run.data.tags["arm"] == best
    assert store["parent"].data.tags["registered_model"] == f"report-test-winner: {best} seed={run.data.tags['seed']}"
    folder = run_dir(store["files"]["runs"], best, int(run.data.tags["seed"]))
    assert_same_predictions(mlflow.pytorch.load_model("models:/report-test-winner/1"), folder / "model.pt",
                            store["files"]["data"])


@pytest.mark.slow
def test_publishing_again_changes_nothing(store):
    """Each arm x seed is one run, found by its fingerprint: a second publication of the
    same study adds no run, no metric step, no model version and no artifact."""
    client = store["client"]

    def snapshot():
        runs = client.search_runs([store["parent"].info.experiment_id])
        return sorted((r.info.run_name, r.info.status, r.data.tags.get("published"), len(client.get_metric_history(
            r.info.run_id, "test_acc")), len(client.list_artifacts(r.info.run_id))) for r in runs), \
            len(client.search_model_versions("name = 'report-test-winner'"))

    before = snapshot()
    publish_study(store["files"], store["db"])
    assert snapshot() == before
    assert len(before[0]) == 5 and before[1] == 1  # a parent, four children; one version


@pytest.mark.slow
def test_the_parent_run_describes_the_answer(store):
    summary = Summary.model_validate_json((store["files"]["evaluation"] / "summary.json").read_text())
    last = summary.checkpoints["last"]
    note = store["parent"].data.tags["mlflow.note.content"]
    other = next(a for a in store["record"].arms if a != summary.baseline)
    assert f"{other} vs {summary.baseline}: {last.comparisons[other].verdict}." in note
    for arm in store["record"].arms:
        assert f"{arm} {last.arms[arm].test_acc.mean * 100:.2f} ± " in note
    assert f"The report: reports/{store['files']['reports'].name}/report.html." in note
    assert store["files"]["reports"].name == "report-test,epochs=1,seeds=0+1"  # what differs is named


@pytest.mark.slow
def test_a_deleted_experiment_and_a_lost_answer_cost_no_run_and_make_none_twice(study_files, tmp_path, monkeypatch,
                                                                                request):
    """Into a new store: a run whose creation MLflow did but whose answer was lost (the
    publication fails, one line) is found by its tag the next time, not made again; an
    experiment deleted in the UI is restored with its runs when the study is published again."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.publish import Unpublished

    db = tmp_path / "mlflow.db"
    made = MlflowClient.create_run
    lost = []

    def create_then_lose_the_answer(self, *a, **k):
        run = made(self, *a, **k)
        if not lost:
            lost.append(run.info.run_id)
            raise ConnectionError("the connection dropped before the answer came")
        return run

    monkeypatch.setattr(MlflowClient, "create_run", create_then_lose_the_answer)
    uri = mlflow.get_tracking_uri()  # this test's store is not the module's: set back at the end
    request.addfinalizer(lambda: mlflow.set_tracking_uri(uri))
    with pytest.raises(Unpublished, match="did not take study report-test"):
        _publish(study_files["two"], db)
    publish_study(study_files["two"], db)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("report-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 5 and lost[0] in {r.info.run_id for r in runs}  # the parent whose answer was lost
    assert all(r.info.status == "FINISHED" for r in runs)
    client.delete_experiment(exp.experiment_id)
    publish_study(study_files["two"], db)
    again = client.search_runs([exp.experiment_id])
    assert client.get_experiment(exp.experiment_id).lifecycle_stage == "active"
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)


@pytest.mark.slow
def test_the_publish_command_sends_the_report_not_the_studys_plan_and_records(study_files, tmp_path, request):
    """reports/<study>/ also holds the study's plan and committed records: `publish` logs
    the report's own files, as the report stage does, and one checksums tag that parses."""
    import json
    import shutil

    import mlflow
    from mlflow.tracking import MlflowClient

    uri = mlflow.get_tracking_uri()
    request.addfinalizer(lambda: mlflow.set_tracking_uri(uri))
    src = study_files["two"]
    files = {k: tmp_path / Path(v).relative_to(src["root"]) for k, v in src.items()
             if k in ("runs", "evaluation", "reports", "params")}
    for k in ("runs", "evaluation", "reports"):
        shutil.copytree(src[k], files[k])
    shutil.copy2(src["params"], files["params"])
    (files["reports"] / "records" / "aug=none").mkdir(parents=True)
    for seed in range(100):  # as many records as a large study commits
        (files["reports"] / "records" / "aug=none" / f"seed={seed}.npz").write_bytes(b"record")
    (files["reports"] / "plan.yaml").write_text("study: report-test\n")
    publish_study({**files, "root": tmp_path}, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = [r for r in client.search_runs([client.get_experiment_by_name("report-test").experiment_id])
                if "mlflow.parentRunId" not in r.data.tags]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.md" in logged and not {"report/records", "report/plan.yaml"} & logged
    assert "report/report.md" in json.loads(parent.data.tags["checksums"])


def _publish(files: dict, db: Path) -> None:
    """Publisher.publish itself, which raises where the command prints one line."""
    from pipeline.core.study import StudyRecord
    from pipeline.tracking.publish import Publisher

    record = StudyRecord.model_validate_json((files["runs"] / "study.json").read_text())
    Publisher(files["root"], f"sqlite:///{db}").publish(record, files["runs"])


def test_a_copy_is_independent_of_its_source(tmp_path):
    """clone_file: copy-on-write where the file system has it, else a copy; either way
    writing one side leaves the other as it was, and the mode is kept."""
    from pipeline.core.io import clone_file

    src, dest = tmp_path / "src.pt", tmp_path / "dest.pt"
    src.write_bytes(b"weights" * 1000)
    src.chmod(0o444)
    clone_file(src, dest)
    assert dest.read_bytes() == src.read_bytes() and not os.path.samefile(src, dest)
    assert oct(dest.stat().st_mode & 0o777) == "0o444"
    dest.chmod(0o644)
    with open(dest, "r+b") as f:
        f.write(b"W")
    assert src.read_bytes() == b"weights" * 1000


@pytest.mark.slow
def test_each_arm_is_in_mlflow_as_soon_as_it_finishes(tmp_path):
    """While the study trains on, its finished arms are published (the parent RUNNING);
    when the stage ends, the parent is FINISHED with every arm."""
    import subprocess
    import time

    from tests.conftest import BIN, TRACKING_ON, env, make_project, mlflow_runs, run

    proj = make_project(tmp_path, per_class=60, seeds=[0, 1], epochs=20, aug="none")  # a second arm of ~10 s
    run("dvc repro untar", proj)
    db = proj / "mlflow.db"
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=proj, env=env(TRACKING_ON),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while proc.poll() is None:
        try:
            runs = mlflow_runs(db) if db.exists() else []
        except Exception:  # sqlite3: the store is being created
            runs = []
        state = sorted((r["parent"] is None, r["status"]) for r in runs)
        training = bool(list(proj.glob(".arm-cache/*/state.pt")))  # the second arm trains on
        if state and (state, training) not in seen:
            seen.append((state, training))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stdout.read()
    # the first arm's run, finished, under a parent still running, while the second arm trains;
    # then both, under a finished parent
    assert ([(False, "FINISHED"), (True, "RUNNING")], True) in seen, seen
    seen = [state for state, _ in seen]
    assert seen[-1] == [(False, "FINISHED"), (False, "FINISHED"), (True, "FINISHED")], seen
