"""No secret or local path reaches what users publish: reports/, metrics/, dvc.lock,
MLflow params and tags, or what the stages print."""
from __future__ import annotations

import json

import pytest

from tests.conftest import make_project, run

pytestmark = pytest.mark.slow

URI = "postgresql://user:s3cr3t-pw@db.example.invalid:5432/mlflow"


def test_a_team_server_uri_and_the_repository_path_stay_out_of_everything_published(tmp_path, trained):
    proj = make_project(tmp_path, cached=trained)
    out = run("dvc repro", proj, extra_env={"MLFLOW_TRACKING_URI": URI})
    printed = out.stdout + out.stderr
    published = {"printed by the stages": printed, "dvc.lock": (proj / "dvc.lock").read_text()}
    for folder in ("reports", "metrics"):
        for f in (proj / folder).rglob("*"):
            if f.is_file() and f.suffix in (".md", ".html", ".json", ".csv"):
                published[str(f.relative_to(proj))] = f.read_text(errors="replace")
    events = [json.loads(line) for f in (proj / ".cache" / "tracking" / "runs").rglob("events.jsonl")
              for line in f.read_text().splitlines() if line.strip()]
    for e in events:  # what MLflow is sent as params, tags, descriptions and dataset sources
        if e["do"] in ("start", "params", "tags", "dataset"):
            published[f"MLflow {e['do']}"] = json.dumps({k: v for k, v in e.items() if k != "uri"})
    assert len(published) > 10
    for where, text in published.items():
        assert "s3cr3t-pw" not in text, where
        assert str(proj) not in text and str(proj.resolve()) not in text, where
    report = next((proj / "reports").glob("*/report.md")).read_text()
    assert "postgresql://db.example.invalid:5432/mlflow" in report  # the server, named without its credentials
