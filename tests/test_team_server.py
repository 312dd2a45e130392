"""A team tracking server: with MLFLOW_TRACKING_URI=http://... pointing at a real
`mlflow server` whose store is PostgreSQL, a small study's parent and child runs,
metrics, models and report arrive there (checked through MLflow's REST API)."""
from __future__ import annotations

import json
import os
import urllib.request
import uuid

import pytest

from tests.conftest import make_project, run
from tests.services import start_mlflow_server, start_postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """The server `.ci/run` started (CIFAR_ABLATE_TEST_MLFLOW), else one of its own on
    PostgreSQL (CIFAR_ABLATE_TEST_POSTGRES, else one of its own too)."""
    if os.environ.get("CIFAR_ABLATE_TEST_MLFLOW"):
        yield os.environ["CIFAR_ABLATE_TEST_MLFLOW"]
        return
    folder = tmp_path_factory.mktemp("team")
    uri = os.environ.get("CIFAR_ABLATE_TEST_POSTGRES")
    stop_pg = None
    if not uri:
        uri, stop_pg = start_postgres()
    base, stop = start_mlflow_server(uri, folder / "artifacts", folder / "mlflow.log")
    try:
        yield base
    finally:
        stop()
        if stop_pg:
            stop_pg()


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_study_is_recorded_on_a_team_server_with_postgresql(tmp_path, team_server):
    study = f"team-study-{uuid.uuid4().hex[:8]}"  # the server may be shared with other test sessions
    proj = make_project(tmp_path, seeds=[0, 1], epochs=1, study=study)
    extra = {"MLFLOW_TRACKING_URI": team_server}
    run("dvc repro", proj, extra_env=extra)
    run("python -m pipeline.tracking publish", proj, extra_env=extra)
    assert not (proj / "mlflow.db").exists()  # nothing went to the embedded store

    exp = _api(team_server, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={study}")["experiment"]
    runs = _api(team_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                              "max_results": 100})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parents = [r for r in runs if "mlflow.parentRunId" not in tags[r["info"]["run_id"]]]
    children = [r for r in runs if "mlflow.parentRunId" in tags[r["info"]["run_id"]]]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0]["info"]["run_id"]
    assert all(tags[c["info"]["run_id"]]["mlflow.parentRunId"] == parent_id for c in children)
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    for child in children:
        history = _api(team_server, f"/api/2.0/mlflow/metrics/get-history?run_id={child['info']['run_id']}"
                                    f"&metric_key=test_acc")["metrics"]
        assert [m["step"] for m in history] == [1]
        inputs = child.get("inputs", {}).get("dataset_inputs", [])
        assert {i["tags"][0]["value"] for i in inputs} == {"train", "test"}
    parent = _api(team_server, f"/api/2.0/mlflow/runs/get?run_id={parent_id}")["run"]
    assert {"aug:none/test_acc", "aug:standard/test_acc", "aug:standard/delta"} <= \
        {m["key"] for m in parent["data"]["metrics"]}
    listed = _api(team_server, f"/api/2.0/mlflow/artifacts/list?run_id={parent_id}&path=report")
    assert {"report/report.md", "report/report.html"} <= {f["path"] for f in listed.get("files", [])}
    # the logged models load back from the server and predict what the checkpoints predict
    code = ("import mlflow, mlflow.pytorch, torch, json, sys; mlflow.set_tracking_uri(sys.argv[1]); "
            "ms = mlflow.search_logged_models(experiment_ids=[sys.argv[2]], output_format='list'); "
            "m = mlflow.pytorch.load_model(f'models:/{ms[0].model_id}'); "
            "print(len(ms), m(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape)")
    out = run(f"python -c \"{code}\" {team_server} {exp['experiment_id']}", proj)
    n_models, shape = out.stdout.split(" ", 1)
    assert int(n_models) == 8 and "torch.Size([2, 10])" in shape  # last and best of each arm x seed


def test_a_server_with_authentication_takes_a_study_with_its_credentials_and_refuses_others(tmp_path):
    """MLflow's basic-auth app in front of the store: with the account's credentials in
    MLFLOW_TRACKING_USERNAME/PASSWORD the study arrives; with a wrong password the
    publication stops at once with one line, and nothing is sent."""
    from tests.services import start_mlflow_server

    uri = os.environ.get("CIFAR_ABLATE_TEST_POSTGRES")
    stop_pg = None
    if not uri:
        from tests.services import start_postgres

        uri, stop_pg = start_postgres()
    password = uuid.uuid4().hex
    base, stop = start_mlflow_server(uri, tmp_path / "artifacts", tmp_path / "mlflow.log",
                                     auth=("team-admin", password))
    try:
        study = f"auth-study-{uuid.uuid4().hex[:8]}"
        proj = make_project(tmp_path, seeds=[0], epochs=1, study=study)
        wrong = {"MLFLOW_TRACKING_URI": base, "MLFLOW_TRACKING_USERNAME": "team-admin",
                 "MLFLOW_TRACKING_PASSWORD": "not-it"}
        run("dvc repro", proj, extra_env=wrong)
        refused = run("python -m pipeline.tracking publish", proj, check=False, extra_env=wrong)
        lines = [x for x in refused.stderr.splitlines() if x.strip()]
        assert refused.returncode == 1 and len(lines) == 1, refused.stdout + refused.stderr
        assert "refused these credentials" in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0]
        assert password not in refused.stdout + refused.stderr
        right = {**wrong, "MLFLOW_TRACKING_PASSWORD": password}
        run("python -m pipeline.tracking publish", proj, extra_env=right)
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={study}")
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(f"team-admin:{password}".encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as r:
            exp = json.loads(r.read())["experiment"]
        runs = _api_auth(base, {"experiment_ids": [exp["experiment_id"]]}, password)
        assert len(runs) == 3 and all(r["info"]["status"] == "FINISHED" for r in runs)  # a parent, 2 children
    finally:
        stop()
        if stop_pg:
            stop_pg()


def _api_auth(base: str, body: dict, password: str) -> list:
    import base64

    req = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.
                                          b64encode(f"team-admin:{password}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read()).get("runs", [])
