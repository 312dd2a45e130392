"""Ray runs the arms: on this machine or a cluster, with the same results as one
process, and a node that dies mid-arm costs at most the epoch in flight."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import (REPO, assert_resumed, assert_trained_fresh, descendants, env, make_project, run, run_queue,
                            wait_for_saved_epochs)
from tests.services import ray_client_env, start_ray_head

# one worker runs these in turn (pytest -n): they share the test services' Ray cluster
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _train(cwd, runs: str, extra: list[str] | None = None, extra_env: dict | None = None,
           **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", "--data", str(kw.pop("data")), "--runs", runs,
                             "--metrics", f"{runs}.json", "--curves", f"{runs}.csv", "--no-mlflow", "--no-progress",
                             *(extra or [])], cwd=cwd, env=env({"PYTHONPATH": str(REPO), **(extra_env or {})}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _same_run(a, b) -> None:
    for name in ("model.pt", "best.pt"):
        wa, wb = (torch.load(d / name, weights_only=True)["model"] for d in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    ma.pop("train_seconds"), mb.pop("train_seconds")
    assert ma == mb


def test_parallel_jobs_on_ray_give_the_results_of_one_process(tmp_path, prepared):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0, 1], "epochs": 2, "batch_size": 32,
                                                          "parallel": 2}))
    out = _train(tmp_path, "ray", data=prepared).communicate(timeout=600)[0]
    assert "2 at a time (Ray on this machine)" in out, out
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0, 1], "epochs": 2, "batch_size": 32}))
    out = _train(tmp_path, "local", ["--retrain"], data=prepared).communicate(timeout=600)[0]
    assert "1 at a time (this process)" in out, out
    assert_trained_fresh(out, runs=4, epochs=2)
    for arm in ("aug=none", "aug=standard"):
        for seed in (0, 1):
            _same_run(tmp_path / "ray" / arm / f"seed={seed}", tmp_path / "local" / arm / f"seed={seed}")


def test_RAY_ADDRESS_sends_the_study_to_a_running_cluster(tmp_path, prepared):
    """A head started with `ray start --head` (by `.ci/run`, else here): with its
    address in RAY_ADDRESS the same command sends every job there, and the results
    are those of one process."""
    address, token, stop = os.environ.get("CIFAR_ABLATE_TEST_RAY"), os.environ.get("CIFAR_ABLATE_TEST_RAY_TOKEN"), None
    if not address:
        address, token, stop = start_ray_head()
    try:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "epochs": 1, "batch_size": 32}))
        out = _train(tmp_path, "ray", data=prepared, extra_env={"RAY_ADDRESS": address, **ray_client_env(token)}
                     ).communicate(timeout=600)[0]
    finally:
        if stop:
            stop()
    assert f"(Ray cluster {address} (" in out, out
    out = _train(tmp_path, "local", ["--retrain"], data=prepared).communicate(timeout=600)[0]
    assert "1 at a time (this process)" in out, out
    assert_trained_fresh(out, runs=2, epochs=1)
    for arm in ("aug=none", "aug=standard"):
        _same_run(tmp_path / "ray" / arm / "seed=0", tmp_path / "local" / arm / "seed=0")


def test_a_missing_or_wrong_token_is_the_line_that_names_the_token(tmp_path, prepared):
    address, token, stop = os.environ.get("CIFAR_ABLATE_TEST_RAY"), os.environ.get("CIFAR_ABLATE_TEST_RAY_TOKEN"), None
    if not address:
        address, token, stop = start_ray_head()
    try:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "epochs": 1, "cluster": address}))
        for auth in ({}, ray_client_env("0" * 64)):  # none, and another cluster's
            proc = _train(tmp_path, "runs", data=prepared, extra_env={"HOME": str(tmp_path), **auth})
            out = proc.communicate(timeout=120)[0]
            assert proc.returncode == 2, out
            assert out.strip().splitlines()[-1] == (
                f"error: the Ray cluster {address} refused this machine's token (missing or wrong); set "
                f"RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token"), out
            assert "Traceback" not in out
    finally:
        if stop:
            stop()


def test_a_node_that_dies_mid_arm_loses_nothing(tmp_path, prepared):
    """A two-node cluster on this machine: the job starts on one node; once it has
    saved an epoch, its worker is frozen (so that the job cannot end on the first
    node however slowly the second starts), a second node joins and the first is
    killed. The driver sends the job to the second node from its last saved epoch,
    and the arm ends bitwise equal to an uninterrupted run in one process."""
    from ray.cluster_utils import Cluster

    cluster, frozen = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}), []  # the head runs no job
    try:
        first = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(
            {"seeds": [0], "aug": "standard", "epochs": 8, "batch_size": 16, "cluster": cluster.address}))
        proc = _train(tmp_path, "runs", data=prepared)
        wait_for_saved_epochs(tmp_path, proc)
        frozen = [p for p in descendants(os.getpid()) if b"ray::_remote_job" in _cmdline(p)]
        assert len(frozen) == 1, "no Ray worker of the first node is running the job"
        os.kill(frozen[0], signal.SIGSTOP)
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        cluster.remove_node(first, allow_graceful=False)
        os.kill(frozen[0], signal.SIGKILL)  # a frozen worker cannot see its node die
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out
        assert "on another worker" in out, out
        assert_resumed(out, 8)  # on the second node, the epochs after the saved one
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cluster.shutdown()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "aug": "standard", "epochs": 8,
                                                          "batch_size": 16}))
    out = _train(tmp_path, "fresh", ["--retrain"], data=prepared).communicate(timeout=600)[0]
    assert_trained_fresh(out, runs=1, epochs=8)
    _same_run(tmp_path / "runs" / "aug=standard" / "seed=0", tmp_path / "fresh" / "aug=standard" / "seed=0")


def test_a_worker_process_killed_mid_arm_loses_nothing(tmp_path, prepared):
    """kill -9 of the Ray worker process running a job (embedded Ray, two jobs at
    once): the driver sends the job to a new worker from its last saved epoch; both
    arms end bitwise equal to an uninterrupted run in one process."""
    params = {"seeds": [0, 1], "aug": "standard", "epochs": 40, "batch_size": 16}  # long enough to kill it mid-arm
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "parallel": 2}))
    proc = _train(tmp_path, "runs", data=prepared)
    try:
        wait_for_saved_epochs(tmp_path, proc)
        running = [p for p in descendants(proc.pid) if b"ray::_remote_job" in _cmdline(p)]
        assert running, "no Ray worker is running a job"
        os.kill(running[0], 9)
        out = proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert "WorkerCrashedError" in out and "on another worker" in out, out
    assert_resumed(out, 40)  # the killed job went on from its saved epoch, not from epoch 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    fresh = _train(tmp_path, "fresh", ["--retrain"], data=prepared).communicate(timeout=600)[0]
    assert_trained_fresh(fresh, runs=2, epochs=40)
    for seed in (0, 1):
        _same_run(tmp_path / "runs" / "aug=standard" / f"seed={seed}",
                  tmp_path / "fresh" / "aug=standard" / f"seed={seed}")


def test_queued_experiments_share_the_cluster(tmp_path):
    """`dvc queue start -j 2` with a cluster address: each experiment's train stage
    joins that cluster as a driver (two more jobs in its table) and sends its arms
    there; none starts a Ray of its own."""
    address, token, stop = os.environ.get("CIFAR_ABLATE_TEST_RAY"), os.environ.get("CIFAR_ABLATE_TEST_RAY_TOKEN"), None
    if not address:
        address, token, stop = start_ray_head()
    auth = ray_client_env(token)
    try:
        proj = make_project(tmp_path, seeds=[0], epochs=1, cluster=address)
        run("dvc repro untar && git add -A && git commit -qm data", proj)
        before = _drivers(address, auth, proj)
        for overrides in ("-S aug=none", "-S aug=standard"):
            run(f"dvc exp run --queue {overrides}", proj)
        status = run_queue(proj, 2, extra_env=auth)
        assert status.count("Success") == 2, status
        logs = "".join(run(f"dvc queue logs {name}", proj).stdout
                       for name in [line.split()[1] for line in status.splitlines() if "Success" in line])
        assert logs.count(f"(Ray cluster {address} (") == 2, logs[-3000:]
        assert _drivers(address, auth, proj) - before == 3  # the two experiments, and the first count's own
    finally:
        if stop:
            stop()


def _drivers(address: str, auth: dict, cwd) -> int:
    """How many drivers (jobs) the cluster has seen before this query's own."""
    code = ("import ray; from ray._private import state; ray.init(address='%s', configure_logging=False, "
            "log_to_driver=False); print(len(state.jobs()) - 1)" % address)
    return int(subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(auth), capture_output=True, text=True,
                              check=True, timeout=120).stdout.split()[-1])


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
