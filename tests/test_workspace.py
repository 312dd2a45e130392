"""One DVC run per workspace, with the params it started with; a refused value costs
no output and says how to undo only itself."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from tests.conftest import BIN, env, make_project, run

pytestmark = pytest.mark.slow


def test_a_second_dvc_exp_run_is_refused_and_the_first_keeps_its_params(tmp_path, trained):
    """A second `dvc exp run` while a first one trains: DVC refuses it (its lock), but
    not before writing its -S values into params.yaml and clearing the refs the first
    needs to record its experiment. The first run's stages read the params it started
    with (not the second's), and its last one says how to put the file back and record
    the experiment, which then works."""
    proj = make_project(tmp_path, cached=trained)
    run("dvc repro", proj)  # from the arm store: what the workspace holds before
    first = subprocess.Popen([str(BIN / "dvc"), "exp", "run", "-S", "seeds=[7]", "-S", "aug=standard", "-S",
                              "epochs=150"], cwd=proj, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(proj.glob(".arm-cache/*/state.pt")):  # the first run is training
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        t0 = time.monotonic()
        second = run("dvc exp run -S aug=none -S lr=0.01", proj, check=False)
        assert time.monotonic() - t0 < 120 and first.poll() is None  # refused at once; the first still trains
    finally:
        out = first.communicate(timeout=600)[0]
    assert second.returncode != 0 and "exp run -S seeds=[7]" in second.stdout + second.stderr  # names the first
    written = yaml.safe_load((proj / "params.yaml").read_text())
    assert written["aug"] == "none" and written["lr"] == 0.01  # what DVC wrote for the refused run
    trained_arms = json.loads((proj / "metrics" / "train.json").read_text())["arms"]
    assert list(trained_arms) == ["aug=standard"] and trained_arms["aug=standard"]["n_seeds"] == 1
    rows = (proj / "runs" / "aug=standard" / "seed=7" / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 150  # the epochs it started with
    study = json.loads((proj / "metrics" / "study.json").read_text())
    assert set(study) == {"aug=standard/test_acc", "n_seeds"}  # evaluated with its own params, not aug=none
    said = next(line for line in out.splitlines() if "changed while this run went on" in line)
    assert "(aug, lr: another `dvc exp run` wrote it and was refused)" in said
    assert first.returncode == 0 or "'NoneType' object is not subscriptable" in out  # DVC's own bookkeeping
    # what the warning says: undo only what DVC wrote for the refused run, then record the experiment
    assert "`python -m pipeline.params set 'aug=standard' 'lr=null'`" in said and "`dvc exp save`" in said
    run("python -m pipeline.params set 'aug=standard' 'lr=null'", proj)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    assert p["aug"] == "standard" and p["lr"] is None and p["seeds"] == [7] and p["epochs"] == 150
    if first.returncode != 0:
        run("dvc exp save -n first", proj)
    assert "first" in run("dvc exp list --all-commits", proj).stdout or first.returncode == 0


def test_a_refused_value_keeps_the_outputs_and_the_users_other_edits(tmp_path, trained):
    proj = make_project(tmp_path, cached=trained)
    (proj / "params.yaml").write_text("# The study: a comment DVC's rewrite drops\n" + (proj / "params.yaml").read_text())
    run("git commit -qam comment && dvc repro", proj)
    before = {f: (proj / f).read_bytes() for f in ("metrics/train.json", "plots/curves.csv", "metrics/study.json")}
    text = (proj / "params.yaml").read_text()
    (proj / "params.yaml").write_text(text.replace("eval_batch_size: auto", "eval_batch_size: 64"))  # a user's edit
    refused = run("dvc exp run -S lr=100", proj, check=False)
    assert refused.returncode != 0
    err = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "lr = 100" in err[0] and "git checkout" not in err[0], refused.stderr
    assert "`python -m pipeline.params set --layout-from HEAD 'lr=null'`" in err[0]
    assert {f: (proj / f).read_bytes() for f in before} == before  # the tracked outputs, as they were
    run("python -m pipeline.params set --layout-from HEAD 'lr=null'", proj)
    after = (proj / "params.yaml").read_text()
    assert "eval_batch_size: 64" in after and "\nlr: null\n" in after
    assert after.startswith("# The study: a comment DVC's rewrite drops")  # back
