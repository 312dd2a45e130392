"""No secret or local path reaches what users publish: reports/, metrics/, dvc.lock,
MLflow params and tags, or what the stages print."""
from __future__ import annotations

import json
import sqlite3

import pytest

from tests.conftest import TRACKING_ON, make_project, run

pytestmark = pytest.mark.slow

URI = "postgresql://user:s3cr3t-pw@db.example.invalid:5432/mlflow"


def test_a_team_server_uri_and_the_repository_path_stay_out_of_everything_published(tmp_path, trained):
    proj = make_project(tmp_path, cached=trained)
    out = run("dvc repro", proj, extra_env={"MLFLOW_TRACKING_URI": URI, **TRACKING_ON})
    printed = out.stdout + out.stderr
    published = {"printed by the stages": printed, "dvc.lock": (proj / "dvc.lock").read_text()}
    for folder in ("reports", "metrics"):
        for f in (proj / folder).rglob("*"):
            if f.is_file() and f.suffix in (".md", ".html", ".json", ".csv"):
                published[str(f.relative_to(proj))] = f.read_text(errors="replace")
    published["runs/study.json"] = (proj / "runs" / "study.json").read_text()
    # what MLflow is sent as params, tags, descriptions and dataset sources (published here to an
    # embedded store: the team server above does not exist)
    run("python -m pipeline.tracking publish", proj)
    with sqlite3.connect(proj / "mlflow.db") as db:
        for table in ("params", "tags", "datasets", "experiment_tags"):
            rows = db.execute(f"select * from {table}").fetchall()
            assert rows, table
            published[f"MLflow {table}"] = json.dumps(rows)
    assert len(published) > 10
    for where, text in published.items():
        assert "s3cr3t-pw" not in text, where
        assert str(proj) not in text and str(proj.resolve()) not in text, where
    report = next((proj / "reports").glob("*/report.md")).read_text()
    assert "postgresql://db.example.invalid:5432/mlflow" in report  # the server, named without its credentials
