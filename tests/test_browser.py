"""The report and the MLflow UI in a real (headless) Chromium.

One small study is made by the real stages with MLflow on (a SQLite store in a
temporary folder). Then: report.html opens without console or page errors, all
its images decode, and it requests nothing beyond its own file; and an MLflow
server on that store lists the study's experiment and its parent and child runs
as FINISHED through the REST API, and its UI page renders.

Needs Chromium at /usr/bin/chromium (`apt-get install -y chromium`; `make test`
installs it) and the `playwright` Python package (its own browsers are not
used). Missing either is a failure, not a skip.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.core.contracts import run_dir
from pipeline.core.study import StudyRecord
from pipeline.report.build import SECTIONS
from tests.conftest import assert_same_predictions, publish_study

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 75


@pytest.fixture(scope="module")
def study(study_files):
    """The session's small study, published to its MLflow store."""
    root = study_files["root"]
    publish_study(study_files["two"], study_files["db"])
    return {**study_files["two"], "root": root, "db": study_files["db"]}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A persistent Chromium context on a fresh profile folder."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `apt-get install -y chromium` "
                    "(`make test` installs it)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the `playwright` package is missing: pip install playwright "
                    "(it drives the system Chromium; no browser download needed)", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    pw = sync_playwright().start()
    try:
        ctx = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                    args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()
    finally:
        pw.stop()


def test_report_html_renders_self_contained(study, browser):
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        url = (study["reports"] / "report.html").resolve().as_uri()
        page.goto(url, wait_until="load")
        imgs = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        tables = page.evaluate("document.querySelectorAll('table').length")
    finally:
        page.close()
    assert errors == []
    assert len(imgs) >= 10
    assert all(complete and width > 0 for complete, width, _ in imgs), [alt for c, w, alt in imgs if not (c and w)]
    assert headings == [f"{i}. {t}" for i, t in enumerate(SECTIONS, 1)]
    assert tables >= 5
    assert requests and all(u.startswith(("file://", "data:")) for u in requests), \
        [u for u in requests if not u.startswith(("file://", "data:"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _wait_up(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(f"mlflow server did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """End the server and its workers: the process group this test started it in."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_mlflow_server_lists_the_study_and_its_ui_renders(study, browser, tmp_path):
    record = StudyRecord.model_validate_json((study["runs"] / "study.json").read_text())
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "w") as out:
        proc = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{study['db']}",
                                 "--host", "127.0.0.1", "--port", str(port)],
                                cwd=study["root"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_up(base, proc, log)

        experiments = _api(base, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        exp = next((e for e in experiments if e["name"] == "report-test"), None)
        assert exp is not None, [e["name"] for e in experiments]
        assert exp["lifecycle_stage"] == "active"
        exp_tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
        assert exp_tags.get("mlflow.experimentKind") == "custom_model_development"

        found = _api(base, "/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found}
        [parent] = [r for r in found if tags[r["info"]["run_id"]].get("study_key") == record.study_key]
        parent_id = parent["info"]["run_id"]
        assert parent["info"]["status"] == "FINISHED" and "mlflow.parentRunId" not in tags[parent_id]
        by_fp = {tags[r["info"]["run_id"]].get("fingerprint"): r for r in found}
        children = {(r.arm, r.seed): by_fp[r.fingerprint] for r in record.runs}
        assert sorted(children) == [("aug=none", 0), ("aug=none", 1), ("aug=standard", 0), ("aug=standard", 1)]
        for name, run in children.items():
            assert run["info"]["status"] == "FINISHED", name
            assert tags[run["info"]["run_id"]]["mlflow.parentRunId"] == parent_id, name
        parent = _api(base, f"/api/2.0/mlflow/runs/get?run_id={parent_id}")["run"]
        metrics = {m["key"]: m["value"] for m in parent["data"].get("metrics", [])}
        # the study's headline, named by arm and in percent; its answer as the parent's name
        assert {"aug:none/test_acc", "aug:standard/test_acc", "aug:standard/delta", "aug:standard/ci_low",
                "aug:standard/ci_high"} <= set(metrics), sorted(metrics)
        assert 1 <= metrics["aug:none/test_acc"] <= 100
        name = parent["info"]["run_name"]
        assert name.startswith("report-test: aug=standard ") and " pts (p " in name, name

        # the report stage logged its output onto the parent run
        listed = _api(base, f"/api/2.0/mlflow/artifacts/list?run_id={parent_id}&path=report")
        assert {"report/report.md", "report/report.html"} <= {f["path"] for f in listed.get("files", [])}

        # the logged model loads back and predicts the classes its checkpoint predicts
        child = next(iter(children.values()))
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(f"sqlite:///{study['db']}")
        tags = mlflow.MlflowClient().get_run(child["info"]["run_id"]).data.tags
        served = mlflow.pytorch.load_model(f"models:/{tags['model_id.last']}")
        assert_same_predictions(served, run_dir(study["runs"], tags["arm"], int(tags["seed"])) / "model.pt",
                                study["data"])

        # the address `make mlflow-ui` prints for the study: the model-training view, on the runs table
        urls = subprocess.run([sys.executable, "-m", "pipeline.tracking", "urls", "--base", base], cwd=study["root"],
                              env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{study['db']}"},
                              capture_output=True, text=True, check=True).stdout.splitlines()
        assert urls == [f"report-test: {base}/#/experiments/{exp['experiment_id']}/runs?viewStateShareKey=answer"]
        page = browser.new_page()
        page.set_viewport_size({"width": 2400, "height": 1000})  # the table draws the columns in view
        try:
            page.goto(urls[0].split(": ", 1)[1], wait_until="domcontentloaded", timeout=30_000)
            # the runs table, the study's answer as its parent's name, and its columns without a click:
            # each arm's accuracy, the difference and its adjusted p (a shared view the publisher wrote)
            page.get_by_text(parent["info"]["run_name"]).first.wait_for(timeout=60_000)
            page.get_by_text("aug:standard/p_adj", exact=True).first.wait_for(timeout=30_000)
            headers = page.inner_text("body")
            for column in ("aug:none/test_acc", "aug:standard/test_acc", "aug:standard/delta", "final_test_acc"):
                assert column in headers, column
            assert page.get_by_text("matching runs").count() >= 1
            # the parent shows the study's headline; a child its logged models and datasets
            page.goto(f"{base}/#/experiments/{exp['experiment_id']}/runs/{parent_id}", wait_until="domcontentloaded")
            page.get_by_text("aug:standard/delta", exact=True).first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            assert "aug:none/test_acc" in text and "verdict/aug:standard" in text
            page.goto(f"{base}/#/experiments/{exp['experiment_id']}/runs/{child['info']['run_id']}",
                      wait_until="domcontentloaded")
            page.get_by_text("Logged models (2)").first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            assert "synthetic CIFAR-shaped images train" in text
        finally:
            page.close()
    finally:
        _stop(proc)


def test_dvc_plots_draw_offline_with_whole_epoch_ticks(tmp_path, trained, browser):
    """`dvc plots show` writes a page with vega inline (.dvc/plots/index.html): it draws
    every plot with no request leaving the page. Epochs are an ordinal axis (one tick
    per epoch: a quantitative one read "1 2 2" for 2 epochs), and the y axis is titled
    once."""
    from tests.conftest import run

    for spec in json.loads(run("dvc plots show --json", trained).stdout)["data"].values():
        spec = spec[0]["content"]
        assert spec["encoding"]["x"]["type"] == "ordinal", spec["encoding"]["x"]
        assert {d["epoch"] for d in spec["data"]["values"]} == {"1", "2"} or \
            {d["epoch"] for d in spec["data"]["values"]} == {1, 2}
        assert [layer["encoding"]["y"]["title"] for layer in spec["layer"] if "y" in layer["encoding"]] == \
            [spec["encoding"]["y"]["title"]]
    out = run(f"dvc plots show -o {tmp_path / 'plots'}", trained)
    assert out.returncode == 0, out.stderr
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    # no network: whatever would leave the machine fails
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
               else route.abort())
    try:
        page.goto((tmp_path / "plots" / "index.html").resolve().as_uri(), wait_until="load")
        page.wait_for_selector("svg.marks, canvas.marks", timeout=30_000)
        drawn = page.evaluate("document.querySelectorAll('svg.marks, canvas.marks').length")
        divs = page.evaluate("document.querySelectorAll('div[id]').length")
    finally:
        page.close()
    assert errors == [] and drawn >= 3 and drawn == divs, (errors, drawn, divs)
    assert requests and all(u.startswith(("file://", "data:")) for u in requests), requests
