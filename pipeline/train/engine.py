"""Where jobs run: in this process, one at a time, or on Ray (this machine or a cluster).

An engine takes `JobSpec`s with their resume states and hands back, as they
happen, `(spec, event)` pairs (pipeline.core.jobs): `Placed` (where the job
runs, once a worker has it), each `Epoch` (with the state to save), then `Finished`; or `Failed` (the
job's own error) or `Lost` (its worker or node died: the driver resubmits it
from its last saved state). The driver does everything else, so the data and
results cross the network and nothing else.

Choosing one (`make_engine`): a cluster address (params `cluster`, or
RAY_ADDRESS) sends every job there; otherwise several jobs at once on this
machine (a GPU, or `parallel` > 1) start Ray here; otherwise the jobs run in
this process, which on a CPU is also the fastest (it has no idle capacity to
share, and starting Ray would cost seconds for nothing).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from pipeline.core.errors import PipelineError
from pipeline.core.jobs import Data, Event, Failed, Finished, JobSpec, Lost, Placed, TrainState

GPU_JOBS_MAX = 8  # jobs sharing one GPU at most


def with_machine(events: Iterator, device: str) -> Iterator:
    """A job's events, its `Finished` naming the machine that trained it."""
    for event in events:
        if isinstance(event, Finished):
            event.machine = machine(device)
        yield event


def machine(device: str) -> str:
    """This machine's CPU, and the GPU when `device` is one: where a run trained."""
    from pipeline.core.hardware import cpu_name

    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(device)}, {cpu_name()}"
    return cpu_name()


class LocalEngine:
    """One job at a time in this process: nothing to start, no data to move."""

    name = "this process"
    slots = 1

    def __init__(self, data: Data, on_step: Callable[[int], None] | None = None):
        from pipeline.arm.job import run_job

        self.data, self.on_step, self._run = data, on_step, run_job
        self._job: tuple[JobSpec, Iterator] | None = None

    def busy(self) -> int:
        return int(self._job is not None)

    def submit(self, spec: JobSpec, resume: TrainState | None) -> None:
        assert self._job is None, "the local engine runs one job at a time"
        self._job = (spec, with_machine(self._run(spec, self.data, resume, self.on_step), spec.device))

    def events(self, timeout: float | None = None) -> Iterator[tuple[JobSpec, Event]]:
        """The next event of the running job (blocks while it trains; with one job at
        a time there is no free slot to wait for, so `timeout` does not apply)."""
        spec, gen = self._job
        try:
            event = next(gen)
        except Exception as exc:
            self._job = None
            yield spec, Failed(exc)
            return
        if isinstance(event, Finished):
            self._job = None
        yield spec, event

    def where(self, spec: JobSpec) -> str:
        return socket.gethostname()

    def cancel(self) -> None:
        self._job = None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- Ray


def build(spec: JobSpec) -> tuple[str, dict[str, str]]:
    """What decides `spec`'s results on this machine: the digest of the code it runs
    and the versions of the libraries in its fingerprint (pipeline.core.provenance)."""
    from pipeline.core.provenance import arm_code, library_versions

    return arm_code(spec.cfg.model, spec.cfg.aug), library_versions()


def check_build(spec: JobSpec, expected: tuple[str, dict[str, str]] | None, where: str) -> None:
    """Refuse to train on a worker whose code or libraries differ from the driver's:
    its results would be cached under a fingerprint that does not describe them."""
    if expected is None:
        return
    code, versions = build(spec)
    if code != expected[0]:
        raise PipelineError(f"the Ray worker on {where} has other training code than this machine (code digest "
                            f"{code[:12]}, here {expected[0][:12]}); install the same commit on every node")
    if versions != expected[1]:
        differ = ", ".join(f"{k} {versions.get(k)} (here {v})" for k, v in expected[1].items() if versions.get(k) != v)
        raise PipelineError(f"the Ray worker on {where} has other library versions than this machine: {differ}; "
                            f"install the same versions on every node")


def _remote_job(spec: JobSpec, data: Data, resume: TrainState | None,
                expected: tuple[str, dict[str, str]] | None = None):
    """The job on a Ray worker: every event goes back to the driver as it happens."""
    import ray

    from pipeline.arm.job import run_job

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts; deterministic arms need it
    where = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:6]}"
    yield Placed(where)  # first: where it runs
    check_build(spec, expected, where)
    yield from with_machine(run_job(spec, data, resume), spec.device)


@dataclass(frozen=True)
class Devices:
    """What the jobs of a Ray cluster (or of this machine's Ray) train on: `type`
    cuda when it has GPUs, whether those have bf16 (for precision: auto), and one
    GPU's memory in bytes (to size each job's share of a GPU)."""

    type: str = "cpu"
    bf16: bool | None = None
    gpu_memory: int = 0


def _probe() -> Devices:
    """What the node it runs on trains with: its GPU (run with a share of one), else its CPU."""
    import torch

    if not torch.cuda.is_available():
        return cpu_devices()
    return Devices("cuda", bool(torch.cuda.is_bf16_supported(including_emulation=False)),
                   int(torch.cuda.get_device_properties(0).total_memory))


def cpu_devices() -> Devices:
    """This machine's CPU: whether it computes bf16 natively (pipeline.core.hardware)."""
    from pipeline.core.hardware import native_bf16

    return Devices("cpu", bool(native_bf16()))


# Where one of these exists an NVIDIA driver may be present (Linux, WSL); elsewhere
# torch cannot start CUDA, so `device: auto` is the CPU without importing torch.
_NVIDIA_SIGNS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def local_devices(setting: str) -> tuple[str, Devices]:
    """The device `setting` (params `device`) means on this machine, and what it has.
    torch is imported only where an NVIDIA driver may be present."""
    if setting == "cpu" or (setting == "auto" and sys.platform.startswith("linux")
                            and not any(map(os.path.exists, _NVIDIA_SIGNS))):
        return "cpu", cpu_devices()
    from pipeline.arm.loop import resolve_device

    device = resolve_device(setting)
    if device.type != "cuda":
        return str(device), cpu_devices()
    import torch

    return str(device), Devices("cuda", bool(torch.cuda.is_bf16_supported(including_emulation=False)),
                                int(torch.cuda.get_device_properties(device).total_memory))


_DEVICES: dict[str | None, Devices] = {}  # per address: a cluster is probed once per process


CONNECT_S = 60  # how long joining a cluster may take before the study says it cannot


def connect(address: str | None) -> Devices:
    """Join the cluster at `address` (or start Ray here) and say what its jobs train on.
    A cluster that cannot be reached, refuses this machine's token or does not answer
    within CONNECT_S seconds is one line; so is Ctrl-C while connecting."""
    try:
        import ray
    except ImportError:
        raise PipelineError("Ray is not installed, and this study asks for it (a cluster address or several jobs "
                            "at once): pip install 'ray==2.60.0'") from None
    if not ray.is_initialized():
        hint = ("check `cluster` in params.yaml or RAY_ADDRESS (the machine running the study must be a node of "
                "that cluster)")
        if address:
            _check_reachable(address, hint)
        # "local": a Ray of its own, even where `ray start` left a cluster running on this machine
        # (ray.init() would join that one); a cluster is used only when asked for
        # CPU jobs keep the node's thread count, so jobs sharing a node oversubscribe it;
        # spinning OpenMP threads then made each 2-7x slower (bench/oversubscribed.py).
        # Passive waits change no result.
        passive = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
        opts = dict(include_dashboard=False, configure_logging=False, log_to_driver=False, runtime_env=passive)
        if not address:  # in this thread: Ray's own processes die with the thread that started them
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **opts)
        else:
            _join(ray, address, hint, opts)
    if address not in _DEVICES:
        _DEVICES[address] = weakest(probe_nodes())
    return _DEVICES[address]


def _join(ray, address: str, hint: str, opts: dict) -> None:
    """ray.init(address) bounded by CONNECT_S, with Ctrl-C and a refused token one line.
    Joining starts no Ray process here, so a thread may do it (and be given up)."""
    done: dict = {}

    def init():  # in a thread: a cluster that never answers holds ray.init in C, where no signal reaches
        try:
            ray.init(address=address, **opts)
        except BaseException as exc:  # noqa: BLE001  said below, in the main thread
            done["error"] = exc
        done["ended"] = True

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    with _ray_output(thread) as said:
        thread.start()
        deadline = time.monotonic() + CONNECT_S
        try:  # Ray retries a refused token for 20 s: said at once instead
            while thread.is_alive() and time.monotonic() < deadline and "InvalidAuthToken" not in said():
                thread.join(0.5)
        except KeyboardInterrupt:
            done["interrupted"] = True
        output = said()
    if done.get("interrupted"):
        print(f"interrupted while connecting to the Ray cluster {address or 'on this machine'}", file=sys.stderr)
        raise SystemExit(130)
    exc = done.get("error")
    if isinstance(exc, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in output:
        raise PipelineError(f"the Ray cluster {address} refused this machine's token (missing or wrong); set "
                            f"RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
    if "ended" not in done:
        raise PipelineError(f"the Ray cluster {address} did not answer within {CONNECT_S} s; {hint}")
    if exc is not None:
        raise PipelineError(f"cannot reach the Ray cluster {address}: {' '.join(str(exc).split())[:200]}; {hint}")


def _check_reachable(address: str, hint: str) -> None:
    """A host:port address that refuses connections or does not resolve: one line, at once
    (Ray itself would retry, with warnings, for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise PipelineError(f"cannot reach the Ray cluster {address}: {exc.strerror or exc}; {hint}") from None


@contextlib.contextmanager
def _ray_output(thread: threading.Thread):
    """What Ray prints on this process's stderr while `thread` connects, kept from the
    terminal (a line says what went wrong instead) and read by the function it gives.
    Where the thread goes on (a connection given up), Ray's fd 2 stays quiet and
    Python's stderr goes to the terminal."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield lambda: f.seek(0) or f.read().decode(errors="replace")
        finally:
            if thread.is_alive():
                sys.stderr = os.fdopen(saved, "w", buffering=1)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            else:
                os.dup2(saved, 2)
                os.close(saved)


def probe_nodes() -> list[Devices]:
    """What each live node has, probed on that node: a node with GPUs with a small
    share of one, not a whole one (the GPUs may be packed with other studies' jobs),
    any other with no resources at all."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        gpu = n["Resources"].get("GPU", 0) >= 1 / GPU_JOBS_MAX
        probe = ray.remote(num_gpus=1 / GPU_JOBS_MAX if gpu else 0, num_cpus=0)(_probe)
        refs.append(probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote())
    return ray.get(refs)


def weakest(found: list[Devices]) -> Devices:
    """The devices every job can count on, wherever Ray places it: cuda if any node
    has a GPU, bf16 only if all of them (GPUs, else CPUs) have it, and the smallest
    GPU's memory."""
    cuda = [d for d in found if d.type == "cuda"]
    if not cuda:
        return Devices("cpu", bool(found) and all(d.bf16 for d in found))
    return Devices("cuda", all(d.bf16 for d in cuda), min(d.gpu_memory for d in cuda))


def ray_failure(spec: JobSpec, node: str, exc: BaseException) -> Lost | Failed:
    """What a Ray error (other than the job's own) means for the job: `Lost` when its
    worker, node or objects died under it, or Ray's memory monitor killed it (the job
    goes on elsewhere, at most MAX_LOST times: pipeline.train.stage); else `Failed`,
    with one line: Ray cannot run it, and would not on a retry."""
    from ray import exceptions as e

    died = (e.WorkerCrashedError, e.NodeDiedError, e.ObjectLostError, e.LocalRayletDiedError, e.RaySystemError,
            e.OutOfMemoryError, e.RayActorError)
    if isinstance(exc, died):
        return Lost(f"{type(exc).__name__} on {node or 'its worker'}")
    return Failed(PipelineError(f"{spec.label}: Ray could not run it: {type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:300]}"))


@dataclass
class _Running:
    spec: JobSpec
    gen: object  # ray.ObjectRefGenerator
    node: str = ""  # until the worker says where it is


class RayEngine:
    """Every job as a Ray task (a generator streaming its epochs back). The data go
    into Ray's object store once and reach each node once; a job asks for the CPUs
    and the share of a GPU it needs: that of the largest of `sizing` (default
    `jobs`, the jobs to train, which also bound how many run at once)."""

    def __init__(self, data: Data, address: str | None, jobs: list[JobSpec], parallel: int | str,
                 device_type: str, sizing: list[JobSpec] | None = None):
        import ray

        self._ray = ray
        t0 = time.perf_counter()
        devices = connect(address)
        self.start_seconds = time.perf_counter() - t0
        self.address = address
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.name = (f"Ray cluster {address} ({len(nodes)} node(s))" if address else "Ray on this machine")
        t0 = time.perf_counter()
        self.data_ref = ray.put(data)
        self.put_seconds = time.perf_counter() - t0
        self.options = job_resources(sizing or jobs, nodes, parallel, device_type,
                                     (len(data.train_y), len(data.test_y)), devices.gpu_memory)
        self.slots = capacity(self.options, nodes, len(jobs))
        # a GPU job in a fresh worker: a reused one keeps the CUDA context of the GPU its last
        # job had, whatever Ray assigns next (0: CPU workers are reused)
        max_calls = 1 if self.options.get("num_gpus") else 0
        self._remote = ray.remote(max_retries=0, max_calls=max_calls)(_remote_job)
        self.running: dict[str, _Running] = {}

    def busy(self) -> int:
        return len(self.running)

    def submit(self, spec: JobSpec, resume: TrainState | None) -> None:
        gen = self._remote.options(**self.options).remote(spec, self.data_ref, resume, build(spec))
        self.running[spec.fp] = _Running(spec, gen)

    def events(self, timeout: float | None = None) -> Iterator[tuple[JobSpec, Event]]:
        """The events that are ready now (waits for at least one, or `timeout` seconds)."""
        ray = self._ray
        by_gen = {id(r.gen): r for r in self.running.values()}
        ready, _ = ray.wait([r.gen for r in self.running.values()], num_returns=1, timeout=timeout)
        for gen in ready:
            job = by_gen[id(gen)]
            try:
                event = ray.get(next(gen))
            except StopIteration:
                self.running.pop(job.spec.fp, None)
                continue
            except ray.exceptions.RayTaskError as exc:  # the job's own error, raised in the worker
                self.running.pop(job.spec.fp, None)
                yield job.spec, Failed(exc.as_instanceof_cause())
                continue
            except ray.exceptions.RayError as exc:
                self.running.pop(job.spec.fp, None)
                yield job.spec, ray_failure(job.spec, job.node, exc)
                continue
            if isinstance(event, Placed):
                job.node = event.where
            elif isinstance(event, Finished):
                self.running.pop(job.spec.fp, None)
            yield job.spec, event

    def where(self, spec: JobSpec) -> str:
        job = self.running.get(spec.fp)
        return job.node if job is not None else ""

    def cancel(self) -> None:
        for job in self.running.values():
            try:
                self._ray.cancel(job.gen, force=True)
            except Exception:  # noqa: BLE001  already gone
                pass
        self.running.clear()

    def close(self) -> None:
        self._ray.shutdown()


# --------------------------------------------------------------------------- resources


def job_memory(spec: JobSpec, n_train: int, n_test: int) -> int:
    """Bytes of GPU memory a job needs, estimated: the data (uint8), weights,
    gradients and optimizer moments (fp32), and the activations of one batch kept
    for the backward pass (counted in one forward pass of one image on the CPU),
    with 50% headroom for the allocator and the kernels' workspace."""
    import torch

    import models

    model = models.create_model(spec.cfg.model, **spec.cfg.knobs).eval()
    counted = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: counted.append(out.numel() if torch.is_tensor(out) else 0))
             for m in model.modules() if next(m.children(), None) is None]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    params = sum(p.numel() for p in model.parameters())
    act_bytes = 2 if spec.cfg.precision in ("bf16", "fp16") else 4
    need = (3 * 32 * 32 + 8) * (n_train + n_test) + 16 * params + sum(counted) * spec.cfg.batch_size * act_bytes * 2
    return int(need * 1.5)


def job_resources(jobs: list[JobSpec], nodes: list[dict], parallel: int | str, device_type: str,
                  sizes: tuple[int, int], gpu_memory: int = 0) -> dict:
    """The Ray resources one job asks for. On GPUs: the share of one GPU (of
    `gpu_memory` bytes, else this machine's) its memory estimate needs, for the
    largest of `jobs` (at least 1/8: several small models per GPU, one large
    model per larger slice; a whole GPU when neither memory is known), and one
    CPU. On CPUs: an equal share of a node's cores (`parallel` jobs per node; the
    jobs' torch threads stay at the node's count, so results do not depend on it)."""
    cpus = min((n["Resources"].get("CPU", 1) for n in nodes if n["Resources"].get("CPU")), default=1)
    if device_type == "cuda":
        gpu_mem = gpu_memory or _local_gpu_memory()
        need = max((job_memory(j, *sizes) for j in {j.cfg.model_dump_json(): j for j in jobs}.values()), default=0)
        share = min(1.0, max(1.0 / GPU_JOBS_MAX, need / gpu_mem)) if gpu_mem else 1.0
        if parallel != "auto":
            share = max(share, 1.0 / int(parallel))
        return {"num_gpus": round(share, 4), "num_cpus": 1}
    per_node = 1 if parallel == "auto" else max(1, int(parallel))
    return {"num_cpus": max(1, int(cpus // per_node)), "num_gpus": 0}


def _local_gpu_memory() -> int:
    try:
        import torch

        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def capacity(options: dict, nodes: list[dict], n_jobs: int) -> int:
    """How many jobs of this size fit on the cluster at once (at least one)."""
    total = 0
    for n in nodes:
        res = n["Resources"]
        fits = [res.get("CPU", 0) // options["num_cpus"]] if options.get("num_cpus") else []
        if options.get("num_gpus"):
            fits.append(int(res.get("GPU", 0) / options["num_gpus"] + 1e-9))
        total += int(min(fits)) if fits else 0
    return max(1, min(n_jobs, total))


def make_engine(data: Data, jobs: list[JobSpec], parallel: int | str, cluster: str | None, device_type: str,
                on_step: Callable[[int], None] | None, sizing: list[JobSpec] | None = None):
    """The engine for `jobs`, the study's jobs still to train (see the module
    docstring). A job's share of a GPU is sized for the largest of `sizing` (default
    `jobs`): every job of the study, so that seeds added later fit too."""
    address = cluster_address(cluster)
    local_many = device_type == "cuda" or (parallel != "auto" and int(parallel) > 1)
    if not address and (not local_many or len(jobs) <= 1):
        return LocalEngine(data, on_step)
    return RayEngine(data, address, jobs, parallel, device_type, sizing)


def cluster_address(cluster: str | None) -> str | None:
    """params `cluster`, else RAY_ADDRESS, else None (no cluster)."""
    return cluster or os.environ.get("RAY_ADDRESS") or None
