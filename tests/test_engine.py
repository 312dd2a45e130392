"""Where jobs run and what each asks Ray for: the policy, checked without Ray or a
GPU (nodes as `ray.nodes()` describes them, GPU memory as the cluster's probe
reports it)."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.core.config import parse_params
from pipeline.core.errors import PipelineError
from pipeline.core.jobs import Data, Epoch, Failed, Finished, JobSpec, Lost
from pipeline.train import engine
from pipeline.train.engine import GPU_JOBS_MAX, LocalEngine, capacity, job_resources, make_engine
from pipeline.train.plan import Identity, jobs_for
from tests.conftest import REPO, env
from tests.synthetic import images

GIB = 1 << 30

SIZES = (50_000, 10_000)  # the full dataset lives on every GPU a job uses


def _jobs(preset: str, seeds=(0,), **kw) -> list[JobSpec]:
    """The preset's jobs as the stage makes them for a GPU with bf16 (precision resolved)."""
    p = parse_params({"preset": preset, "seeds": list(seeds), **kw})
    return jobs_for(p, list(seeds), Identity({}, {}, "cuda"), "cuda", bf16=True)


def _gpu_node(gpus=1, cpus=16) -> dict:
    return {"Resources": {"CPU": cpus, "GPU": gpus}, "Alive": True}


def test_small_models_share_a_gpu_and_a_resnet_takes_a_larger_slice():
    """On a 12 GiB GPU (the README: a ResNet-18 in bf16 takes more than 1/8 under 15 GiB)."""
    small = job_resources(_jobs("simple_cnn"), [_gpu_node()], "auto", "cuda", SIZES, gpu_memory=12 * GIB)
    large = job_resources(_jobs("resnet18"), [_gpu_node()], "auto", "cuda", SIZES, gpu_memory=12 * GIB)
    assert _jobs("resnet18")[0].cfg.precision == "bf16"
    assert small == {"num_gpus": round(1 / GPU_JOBS_MAX, 4), "num_cpus": 1}
    assert 1 / GPU_JOBS_MAX < large["num_gpus"] < 1 and large["num_cpus"] == 1
    # the same job on a GPU with a quarter of the memory takes a larger share of it
    smaller_gpu = job_resources(_jobs("resnet18"), [_gpu_node()], "auto", "cuda", SIZES, gpu_memory=3 * GIB)
    assert smaller_gpu["num_gpus"] == pytest.approx(min(1.0, large["num_gpus"] * 4), abs=1e-3)
    # and on a large GPU, several ResNet-18s fit at once
    big = job_resources(_jobs("resnet18"), [_gpu_node()], "auto", "cuda", SIZES, gpu_memory=80 * GIB)
    assert big["num_gpus"] < large["num_gpus"]
    assert capacity(small, [_gpu_node()], 100) == GPU_JOBS_MAX
    assert capacity(small, [_gpu_node(gpus=2)], 100) == 2 * GPU_JOBS_MAX
    assert capacity(large, [_gpu_node()], 100) == int(1 / large["num_gpus"] + 1e-9) >= 1


def test_a_share_is_sized_for_the_largest_job_of_the_study():
    both = _jobs("simple_cnn") + _jobs("resnet18")
    alone = job_resources(_jobs("resnet18"), [_gpu_node()], "auto", "cuda", SIZES, gpu_memory=80 * GIB)
    assert job_resources(both, [_gpu_node()], "auto", "cuda", SIZES, gpu_memory=80 * GIB) == alone


def test_a_study_with_nothing_left_to_train_needs_no_estimate():
    """Every run restored from the arm cache: no job to size (a GPU cluster used to fail here)."""
    assert job_resources([], [_gpu_node()], "auto", "cuda", SIZES, gpu_memory=80 * GIB)["num_gpus"] == round(
        1 / GPU_JOBS_MAX, 4)


def test_unknown_gpu_memory_asks_for_a_whole_gpu(monkeypatch):
    monkeypatch.setattr(engine, "_local_gpu_memory", lambda: 0)
    assert job_resources(_jobs("simple_cnn"), [_gpu_node()], "auto", "cuda", SIZES)["num_gpus"] == 1.0


def test_parallel_sets_at_most_that_many_jobs_per_gpu():
    opts = job_resources(_jobs("simple_cnn"), [_gpu_node()], 2, "cuda", SIZES, gpu_memory=80 * GIB)
    assert opts["num_gpus"] == 0.5
    assert capacity(opts, [_gpu_node()], 10) == 2


@pytest.mark.parametrize(("parallel", "cpus", "per_job"), [("auto", 8, 8), (2, 8, 4), (3, 8, 2), (16, 8, 1)])
def test_cpu_jobs_share_a_node_s_cores(parallel, cpus, per_job):
    node = {"Resources": {"CPU": cpus}, "Alive": True}
    opts = job_resources(_jobs("simple_cnn"), [node], parallel, "cpu", SIZES)
    assert opts == {"num_cpus": per_job, "num_gpus": 0}
    assert capacity(opts, [node, node], 100) == 2 * (cpus // per_job)
    assert capacity(opts, [node], 1) == 1  # never more slots than jobs


def test_a_head_without_resources_adds_no_slots():
    head = {"Resources": {"CPU": 0}, "Alive": True}
    opts = job_resources(_jobs("simple_cnn"), [head, _gpu_node()], "auto", "cuda", SIZES, gpu_memory=80 * GIB)
    assert capacity(opts, [head, _gpu_node()], 100) == GPU_JOBS_MAX


def _data() -> Data:
    x, y = images(1, seed=0)  # one image per class
    return Data("synthetic", x, y, x, y)


def test_the_cpu_default_runs_in_this_process_and_starts_no_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def no_ray(*a, **kw):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(engine, "RayEngine", no_ray)
    jobs = _jobs("simple_cnn", seeds=(0, 1, 2))
    assert isinstance(make_engine(_data(), jobs, "auto", None, "cpu", None), LocalEngine)
    # several jobs at once, a GPU or a cluster address are what start Ray
    for parallel, device, cluster in ((2, "cpu", None), ("auto", "cuda", None), ("auto", "cpu", "head:6379")):
        with pytest.raises(AssertionError, match="Ray was started"):
            make_engine(_data(), jobs, parallel, cluster, device, None)
    # one job alone never needs Ray on this machine
    assert isinstance(make_engine(_data(), jobs[:1], 2, None, "cuda", None), LocalEngine)


def test_a_job_sends_each_epoch_then_finishes_naming_the_machine_that_trained_it():
    spec = _jobs("simple_cnn", epochs=2, batch_size=4)[0]
    spec = JobSpec(spec.arm, spec.seed, spec.cfg.model_copy(update={"aug": "none", "precision": "fp32"}), spec.fp,
                   "cpu", 8, False, 1)
    local = LocalEngine(_data())
    local.submit(spec, None)
    events = [event for _ in iter(local.busy, False) for _, event in local.events()]
    assert [type(e) for e in events] == [Epoch, Epoch, Finished]
    assert events[-1].machine == engine.machine("cpu") and events[-1].machine


def test_a_worker_with_other_code_or_libraries_refuses_to_train():
    """Its results would be cached under the driver's fingerprint, which does not describe them."""
    spec = _jobs("simple_cnn")[0]
    here = engine.build(spec)
    engine.check_build(spec, here, "node-a")  # the same build trains
    engine.check_build(spec, None, "node-a")  # the in-process engine checks nothing
    with pytest.raises(PipelineError, match=r"the Ray worker on node-a has other training code than this machine "
                                            r"\(code digest [0-9a-f]{12}, here 000000000000\); install the same "
                                            r"commit on every node"):
        engine.check_build(spec, ("0" * 64, here[1]), "node-a")
    with pytest.raises(PipelineError, match=rf"other library versions than this machine: torch {here[1]['torch']} "
                                            r"\(here 1\.0\); install the same versions"):
        engine.check_build(spec, (here[0], {**here[1], "torch": "1.0"}), "node-a")


def test_a_pipeline_error_raised_on_a_worker_is_one_line():
    """Ray wraps a worker's exception with its traceback; the stage prints the error's own line."""
    from ray.exceptions import RayTaskError

    from pipeline.train.driver import _job_error

    cause = PipelineError("the Ray worker on node-a has other training code than this machine")
    wrapped = RayTaskError("_remote_job", "Traceback (most recent call last):\n  ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, PipelineError) and "\n" in str(wrapped)  # several lines, Ray's first
    spec = _jobs("simple_cnn")[0]
    assert _job_error(spec, wrapped) is cause


def test_ray_sizes_a_share_for_every_job_of_the_study_and_its_slots_for_those_to_train(monkeypatch):
    seen = {}

    def fake_ray(data, address, jobs, parallel, device_type, sizing=None):
        seen.update(jobs=jobs, sizing=sizing)

    monkeypatch.setattr(engine, "RayEngine", fake_ray)
    study = _jobs("simple_cnn", seeds=(0, 1, 2))
    make_engine(_data(), study[:2], "auto", "head:6379", "cuda", None, sizing=study)
    assert seen == {"jobs": study[:2], "sizing": study}
    make_engine(_data(), [], "auto", "head:6379", "cuda", None, sizing=study)  # all cached: still sized
    assert seen == {"jobs": [], "sizing": study}


def test_a_dead_worker_is_retried_and_an_error_ray_would_repeat_is_one_line():
    from ray import exceptions as e

    spec = _jobs("simple_cnn")[0]
    for died in (e.WorkerCrashedError(), e.NodeDiedError("node gone"), e.OwnerDiedError("00" * 28, "", ""),
                 e.LocalRayletDiedError()):
        lost = engine.ray_failure(spec, "node-a:1f2e3d", died)
        assert isinstance(lost, Lost) and lost.reason == f"{type(died).__name__} on node-a:1f2e3d"
    failed = engine.ray_failure(spec, "", e.RuntimeEnvSetupError("pip could not install torch==9"))
    assert isinstance(failed, Failed) and isinstance(failed.error, PipelineError)
    assert str(failed.error) == (f"{spec.label}: Ray could not run it: RuntimeEnvSetupError: "
                                 f"{' '.join(str(e.RuntimeEnvSetupError('pip could not install torch==9')).split())}")


def test_jobs_are_sized_for_the_smallest_gpu_of_the_cluster():
    """Mixed GPUs: a share sized on an 80 GiB card would overfill a 16 GiB one, and
    bf16 is chosen only where every GPU has it."""
    from pipeline.train.engine import Devices, weakest

    found = [Devices("cuda", True, 80 * GIB), Devices("cuda", False, 16 * GIB), Devices("cpu", True)]
    assert weakest(found) == Devices("cuda", False, 16 * GIB)
    assert weakest([Devices("cuda", True, 80 * GIB)] * 2) == Devices("cuda", True, 80 * GIB)
    # CPU nodes only: bf16 where every node's CPU has it natively
    assert weakest([Devices("cpu", True), Devices("cpu", True)]) == Devices("cpu", True)
    assert weakest([Devices("cpu", True), Devices("cpu", False)]) == weakest([]) == Devices("cpu", False)


def test_every_node_with_gpus_is_probed_on_that_node(monkeypatch):
    """Ray told of a GPU it does not have: the probe runs there (and finds no CUDA, so
    the jobs train on the CPU); a cluster is probed once per process."""
    import ray

    monkeypatch.setattr(engine, "_DEVICES", {})
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        calls = []
        real = engine.probe_nodes
        monkeypatch.setattr(engine, "probe_nodes", lambda: calls.append(1) or real())
        here = engine.cpu_devices()
        assert real() == [here]  # one node with a GPU share, probed there: no CUDA, its CPU
        assert engine.connect(None) == here and engine.connect(None) == here
        assert calls == [1]
        # the GPU path of the engine (its resources, one fresh worker per job), on the CPU
        spec = _jobs("simple_cnn", seeds=(0, 1), aug="none", epochs=1, batch_size=4)
        specs = [JobSpec(j.arm, j.seed, j.cfg.model_copy(update={"precision": "fp32"}), j.fp, "cpu", 8,
                         False, 1) for j in spec]
        ray_engine = engine.RayEngine(_data(), None, specs, "auto", "cuda")
        assert ray_engine.options == {"num_gpus": 1.0, "num_cpus": 1} and ray_engine.slots == 1  # memory unknown
        finished = []
        for s in specs:
            ray_engine.submit(s, None)
            while ray_engine.busy():
                finished += [sp.seed for sp, ev in ray_engine.events() if isinstance(ev, Finished)]
        assert finished == [0, 1]
    finally:
        ray.shutdown()


def test_the_workers_of_a_study_wait_for_work_without_spinning(monkeypatch):
    """CPU jobs on one node together run more threads than it has cores (each keeps the
    node's count): their OpenMP threads must wait passively, or each job's spinning
    threads starve the other's (2-7x slower each, measured on 2 cores)."""
    import os

    import ray

    monkeypatch.setattr(engine, "_DEVICES", {})
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    try:
        engine.connect(None)
        assert ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("OMP_WAIT_POLICY")).remote()) == "PASSIVE"
    finally:
        ray.shutdown()


# --- joining a cluster: one line, within a bound --------------------------------------------------


def _connect(address: str, connect_s: int = 60, **popen) -> subprocess.Popen:
    """engine.connect(address) in a process of its own (a Ray that hangs stays there)."""
    code = ("import sys, pipeline.train.engine as E; from pipeline.core.errors import cli\n"
            f"E.CONNECT_S = {connect_s}\n"
            "cli(lambda argv: E.connect(sys.argv[1]))()\n")
    return subprocess.Popen([sys.executable, "-c", code, address], cwd=REPO, env=env({"PYTHONPATH": str(REPO)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "garbage.invalid:1"])
def test_an_unreachable_cluster_is_one_line_at_once(address):
    t0 = time.monotonic()
    _, err = _connect(address).communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    assert err.count("\n") == 1 and err.startswith(f"error: cannot reach the Ray cluster {address}: "), err
    assert err.endswith("; check `cluster` in params.yaml or RAY_ADDRESS (the machine running the study must be a "
                        "node of that cluster)\n"), err


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers, as a cluster that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_a_cluster_that_never_answers_is_one_line_within_the_bound(silent_server):
    t0 = time.monotonic()
    proc = _connect(silent_server, connect_s=3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and time.monotonic() - t0 < 60, err
    assert err == (f"error: the Ray cluster {silent_server} did not answer within 3 s; check `cluster` in params.yaml "
                   f"or RAY_ADDRESS (the machine running the study must be a node of that cluster)\n"), err


def test_ctrl_c_while_connecting_is_one_line(silent_server):
    proc = _connect(silent_server, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)  # Ray is imported and connecting
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == f"interrupted while connecting to the Ray cluster {silent_server}\n", err
