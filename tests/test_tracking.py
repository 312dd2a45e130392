"""What a study leaves in MLflow's embedded store, beyond the runs' layout: each
checkpoint stored once, the winning arm's model registered, system metrics per
epoch, and the study's answer as the parent run's description."""
from __future__ import annotations

import os

import pytest

from pipeline.core.contracts import run_dir
from pipeline.core.study import StudyRecord
from pipeline.evaluate.contracts import StudySummary as Summary
from pipeline.core.io import local_path
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
def test_each_checkpoint_and_file_is_stored_once(store):
    """The logged model's weights file and the run's artifacts are hard links to the
    files in runs/ (and the arm cache): no second copy on this disk."""
    import mlflow

    checked = 0
    for run in store["children"]:
        tags = run.data.tags
        folder = run_dir(store["files"]["runs"], tags["arm"], int(tags["seed"]))
        model = mlflow.get_logged_model(tags["model_id.last_model"])
        weights = local_path(model.artifact_location) / "data" / "model.pth"
        assert os.path.samefile(weights, folder / "model.pt")
        assert os.stat(weights).st_nlink >= 3  # the arm cache, runs/ and the store: one file
        history = local_path(run.info.artifact_uri) / "history.csv"
        assert os.path.samefile(history, folder / "history.csv")
        # and the one file is what mlflow.pytorch loads: the network that predicts as the checkpoint does
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
    assert "reports/report-test/report.html" in note


def test_only_a_file_that_never_changes_is_linked_into_the_store(tmp_path):
    """A logged file becomes a hard link to its source only where the source is read-only
    (the arm cache's): git or DVC rewriting a tracked report in place must not reach the
    copy in the store. Linking twice changes nothing and leaves no temporary behind."""
    from pipeline.core.io import link_in_place

    src, dest = tmp_path / "src.csv", tmp_path / "store" / "src.csv"
    dest.parent.mkdir()
    src.write_text("a\n")
    dest.write_text("a\n")
    assert not link_in_place(src, dest) and not os.path.samefile(src, dest)  # writable: stays a copy
    src.chmod(0o444)
    assert link_in_place(src, dest) and os.path.samefile(src, dest)
    assert not link_in_place(src, dest)  # already one file
    assert sorted(p.name for p in dest.parent.iterdir()) == ["src.csv"]


def test_a_store_that_refuses_writes_is_told_from_one_that_refuses_an_event():
    from pipeline.tracking.flusher import _store_fault

    assert _store_fault(RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database"))
    assert _store_fault(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert not _store_fault(RuntimeError("INVALID_PARAMETER_VALUE: Changing param values is not allowed"))
