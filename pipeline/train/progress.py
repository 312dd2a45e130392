"""What a running study shows: the plan with a time estimate before training, then
one line per epoch and per finished job, with the study's ETA, and the jobs done,
running (on which node) and waiting: in a progress bar on a terminal, else on the
lines where a job starts on a Ray worker and where one finishes."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from pipeline.core.contracts import ArmFiles, HistoryRow, RunMetrics
from pipeline.training.job import JobSpec


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@dataclass
class _Job:
    epochs_left: int
    images_per_epoch: int
    where: str = ""
    state: str = "waiting"  # waiting, running, done


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled  # a bar on a terminal; plain lines otherwise
        self.jobs: dict[str, _Job] = {}
        self.total = 0  # images to train in this execution
        self.done = 0
        self.t0 = time.monotonic()
        self.rate: float | None = None  # images/s, measured
        self.bar = None
        self._stepped = 0  # images of the current epoch the bar was moved by, step by step

    # --- before

    def plan(self, params, jobs: list[JobSpec], device, engine, store, identity, retrain: bool,
             data=None) -> None:
        cached = 0 if retrain else sum((store.folder(j.fp) / "done").is_dir() for j in jobs)
        epochs = sorted({a.train.epochs for a in params.arms})
        n_train = self.n_train = len(data.train_y) if data is not None else 0
        for j in jobs:
            if retrain or not (store.folder(j.fp) / "done").is_dir():
                self.jobs[j.fp] = _Job(j.cfg.epochs, n_train)
        self.total = sum(j.epochs_left * j.images_per_epoch for j in self.jobs.values())
        plan = params.seed_plan
        on_demand = f" (up to {plan.max} on demand)" if plan is not None else ""
        line = (f"study {params.study}: {len(params.arms)} arm(s) x {len(params.seeds)} seed(s){on_demand} x "
                f"{'/'.join(map(str, epochs))} epoch(s) on {device}, {engine.slots} at a time ({engine.name}); "
                f"{len(self.jobs)} to train, {cached} in the arm cache")
        if self.jobs and data is not None:
            first = next(j for j in jobs if j.fp in self.jobs)
            self.rate = engine.measure(first) * engine.slots
            line += (f"; about {duration(self.total / self.rate)} of training "
                     f"({self.rate:,.0f} img/s measured on {first.arm})")
        print(line, flush=True)
        if self.enabled and self.total:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="img", unit_scale=True, dynamic_ncols=True, leave=False,
                            mininterval=1.0, desc=params.study, file=sys.stderr)

    def add(self, jobs: list[JobSpec], store, retrain: bool) -> None:
        """More jobs for this execution (seeds on demand)."""
        for j in jobs:
            if retrain or not (store.folder(j.fp) / "done").is_dir():
                self.jobs[j.fp] = _Job(j.cfg.epochs, self.n_train)
                self.total += j.cfg.epochs * self.n_train
        if self.bar is not None:
            self.bar.total = self.total

    # --- while

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def _eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return "done"
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if self.done and elapsed > 0 else self.rate
        return f"ETA {duration(left / rate)}" if rate else "ETA unknown"

    def jobs_line(self) -> str:
        """The study at a glance: jobs done, running (and where), waiting, and the ETA."""
        states = [j.state for j in self.jobs.values()]
        where = sorted({j.where for j in self.jobs.values() if j.state == "running" and j.where})
        return (f"jobs {states.count('done')} done, {states.count('running')} running"
                f"{' on ' + ', '.join(where) if where else ''}, {states.count('waiting')} waiting; {self._eta()}")

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.jobs_line(), refresh=False)

    def started(self, spec: JobSpec, where: str) -> None:
        """`spec` went to `where`; "" while it waits for a Ray worker (or again after
        its worker died), when it still counts as waiting."""
        if spec.fp in self.jobs:
            self.jobs[spec.fp].state, self.jobs[spec.fp].where = ("running" if where else "waiting"), where
            self._postfix()
            if self.bar is None and where:  # plain lines: say where a job went
                self._say(f"{spec.label}: started on {where} [{self.jobs_line()}]")

    def resumed(self, spec: JobSpec, epoch: int) -> None:
        job = self.jobs.get(spec.fp)
        if job is not None:
            skip = epoch * job.images_per_epoch
            self.total -= skip
            job.epochs_left -= epoch
            if self.bar is not None:
                self.bar.total = self.total

    def step(self, images: int) -> None:
        """A training step of a job in this process: the bar moves with it."""
        self._stepped += images
        if self.bar is not None:
            self.bar.update(images)

    def epoch(self, spec: JobSpec, row: HistoryRow) -> None:
        job = self.jobs.get(spec.fp)
        if job is not None:
            self.done += job.images_per_epoch
            if self.bar is not None and not self._stepped:  # a remote job: the bar moves per epoch
                self.bar.update(job.images_per_epoch)
            self._stepped = 0
            self._postfix()
        self._say(f"{spec.label} epoch {row.epoch}/{spec.cfg.epochs}: train loss {row.train_loss:.4f} "
                  f"acc {row.train_acc:.4f}, test loss {row.test_loss:.4f} acc {row.test_acc:.4f}, "
                  f"{row.images_per_second:.0f} img/s [{self._eta()}]")

    def finished(self, spec: JobSpec, m: RunMetrics) -> None:
        if spec.fp in self.jobs:
            self.jobs[spec.fp].state = "done"
            self._postfix()
        self._say(f"{spec.label}: test acc {m.test_acc:.4f}, train acc {m.train_acc:.4f}, gap {m.gap:+.4f} "
                  f"(trained in {m.train_seconds:.1f} s)" + ("" if self.bar is not None else f" [{self.jobs_line()}]"))

    def restored(self, spec: JobSpec, m: RunMetrics, files: ArmFiles) -> None:
        self._say(f"{spec.label}: restored from the arm cache ({spec.fp[:12]}; trained {files.trained_at} on "
                  f"{files.device} in {m.train_seconds:.1f} s): test acc {m.test_acc:.4f}, "
                  f"train acc {m.train_acc:.4f}, gap {m.gap:+.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
