"""What a study leaves in MLflow's embedded store, beyond the runs' layout: records
that are their own copies, with their checksums; the winning arm's model
registered, system metrics per epoch, and the study's answer as the parent run's
description."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from pipeline.core.contracts import run_dir
from pipeline.core.study import StudyRecord
from pipeline.evaluate.contracts import StudySummary as Summary
from tests.conftest import assert_same_predictions


@pytest.fixture(scope="module")
def store(study_files):
    """The session's small study (2 arms x 2 seeds), its journal sent to its store."""
    import mlflow

    from pipeline.tracking import flusher

    uri = f"sqlite:///{study_files['db']}"
    assert flusher.run(study_files["root"], uri, watch=None, linger_s=0, wait=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("report-test")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    files = study_files["two"]
    record = StudyRecord.model_validate_json((files["runs"] / "study.json").read_text())
    return {"client": client, "parent": parent, "children": children, "files": files, "record": record}


@pytest.mark.slow
def test_each_logged_record_is_its_own_copy_with_its_checksum(store):
    """The logged model's weights and the run's artifacts share no file with runs/ or
    the arm cache; each artifact's sha256 is a tag of its run; and the model loads as
    the network that predicts what the checkpoint predicts."""
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
        assert tags["sha256:history.csv"] == hashlib.sha256(history.read_bytes()).hexdigest()
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
def test_system_metrics_are_logged_each_epoch(store):
    client = store["client"]
    for run in store["children"]:
        for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1], key  # the study trains 1 epoch
        used = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")[0].value
        assert 0 < used < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20


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


def test_a_store_that_refuses_writes_is_told_from_one_that_refuses_an_event():
    from pipeline.tracking.flusher import _store_fault

    assert _store_fault(RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database"))
    assert _store_fault(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert not _store_fault(RuntimeError("INVALID_PARAMETER_VALUE: Changing param values is not allowed"))
