"""What a running study shows: the plan, then one line per epoch and per finished
job with the study's ETA, and the jobs done, running (on which node) and
waiting: in a progress bar on a terminal, else on the lines where a job starts
on a Ray worker and where one finishes. The time the training will take is
measured on the first real steps (in this process) or the first epoch (on Ray)
and said once."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from pipeline.core.config import Params
from pipeline.core.jobs import HistoryRow
from pipeline.core.jobs import JobSpec
from pipeline.train.observers import Observer
from pipeline.train.plan import Plan

WARMUP_STEPS = 3  # the first steps of a process run slower, while kernels are chosen
MEASURE_S = 1.0  # then the steps of about this long give the rate


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
    where: str = ""
    state: str = "waiting"  # waiting, running, done


class Progress(Observer):
    def __init__(self, params: Params, device: str, n_train: int, n_test: int, enabled: bool):
        self.params, self.device = params, device
        self.engine = None  # set once made: it needs `step`
        self.n_train, self.n_test = n_train, n_test
        self.enabled = enabled  # a bar on a terminal; plain lines otherwise
        self.jobs: dict[str, _Job] = {}
        self.total = 0  # images to train in this execution
        self.done_images = 0
        self.t0 = time.monotonic()
        self.rate: float | None = None  # images/s of the study, measured
        self.bar = None
        self._stepped = 0  # images of the current epoch the bar was moved by, step by step
        self._steps: list[float] = []  # when the first steps in this process ended
        self._running: JobSpec | None = None
        self._said_plan = False

    # --- before

    def planned(self, plan: Plan) -> None:
        new = {j.fp: _Job(j.cfg.epochs) for j in plan.to_train if j.fp not in self.jobs}
        self.jobs.update(new)
        self.total += sum(j.epochs_left for j in new.values()) * self.n_train
        if self._said_plan:  # seeds added on demand
            if self.bar is not None:
                self.bar.total = self.total
            return
        self._said_plan = True
        p = self.params
        on_demand = f" (up to {p.seed_plan.max} on demand)" if p.seed_plan is not None else ""
        epochs = "/".join(map(str, sorted({a.train.epochs for a in p.arms})))
        print(f"study {p.study}: {len(p.arms)} arm(s) x {len(p.seeds)} seed(s){on_demand} x {epochs} epoch(s) on "
              f"{self.device}, {self.engine.slots} at a time ({self.engine.name}); {len(plan.to_train)} to train, "
              f"{len(plan.restore)} in the arm cache" + (f", {len(plan.recorded)} from committed records"
                                                         if plan.recorded else ""), flush=True)
        if self.enabled and self.total:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="img", unit_scale=True, dynamic_ncols=True, leave=False,
                            mininterval=1.0, desc=p.study, file=sys.stderr)

    # --- while

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def _eta(self) -> str:
        left = self.total - self.done_images
        if left <= 0:
            return "done"
        elapsed = time.monotonic() - self.t0
        rate = self.done_images / elapsed if self.done_images and elapsed > 0 else self.rate
        return f"ETA {duration(left / rate)}" if rate else "ETA unknown"

    def _measured(self, train_rate: float, spec: JobSpec, on: str) -> None:
        """The study's rate from one job's training rate (plus its share of the
        per-epoch evaluation, at about three times that rate), said once."""
        if self.rate is not None:
            return
        per_job = self.n_train / (self.n_train / train_rate + self.n_test / (3 * train_rate))
        self.rate = per_job * max(1, min(self.engine.slots, sum(j.state != "done" for j in self.jobs.values())))
        left = self.total - self.done_images
        self._say(f"about {duration(left / self.rate)} of training ({self.rate:,.0f} img/s measured on {on} "
                  f"of {spec.label})")

    def jobs_line(self) -> str:
        """The study at a glance: jobs done, running (and where), waiting, and the ETA."""
        states = [j.state for j in self.jobs.values()]
        where = sorted({j.where for j in self.jobs.values() if j.state == "running" and j.where})
        return (f"jobs {states.count('done')} done, {states.count('running')} running"
                f"{' on ' + ', '.join(where) if where else ''}, {states.count('waiting')} waiting; {self._eta()}")

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.jobs_line(), refresh=False)

    def started(self, spec: JobSpec, where: str, resumed_epoch: int) -> None:
        job = self.jobs.get(spec.fp)
        if job is not None and resumed_epoch:
            self.total -= resumed_epoch * self.n_train
            job.epochs_left -= resumed_epoch
            if self.bar is not None:
                self.bar.total = self.total
        self._running, self._steps = spec, []
        self.placed(spec, where)

    def placed(self, spec: JobSpec, where: str) -> None:
        """`spec` went to `where`; "" while it waits for a Ray worker (or again after
        its worker died), when it still counts as waiting."""
        if spec.fp in self.jobs:
            self.jobs[spec.fp].state, self.jobs[spec.fp].where = ("running" if where else "waiting"), where
            self._postfix()
            if self.bar is None and where:  # plain lines: say where a job went
                self._say(f"{spec.label}: started on {where} [{self.jobs_line()}]")

    def step(self, images: int) -> None:
        """A training step of a job in this process: the bar moves with it, and the
        first steps after the warm-up measure the rate."""
        self._stepped += images
        if self.bar is not None:
            self.bar.update(images)
        if self.rate is None and self._running is not None:
            self._steps.append(time.perf_counter())
            measured = self._steps[WARMUP_STEPS:]
            if len(measured) > 2 and measured[-1] - measured[0] >= MEASURE_S:
                self._measured(images * (len(measured) - 1) / (measured[-1] - measured[0]), self._running,
                               "its first steps")

    def epoch(self, spec: JobSpec, row: HistoryRow) -> None:
        job = self.jobs.get(spec.fp)
        if job is not None:
            self.done_images += self.n_train
            if self.bar is not None and not self._stepped:  # a remote job: the bar moves per epoch
                self.bar.update(self.n_train)
            self._stepped = 0
            self._postfix()
        split, loss, acc = row.held_out
        self._say(f"{spec.label} epoch {row.epoch}/{spec.cfg.epochs}: train loss {row.train_loss:.4f} "
                  f"acc {row.train_acc:.4f}, {split} loss {loss:.4f} acc {acc:.4f}, "
                  f"{row.images_per_second:.0f} img/s [{self._eta()}]")
        self._measured(row.images_per_second, spec, "the first epoch")

    def done(self, o) -> None:
        m, spec = o.metrics, o.spec
        if o.restored:
            meta = o.record.meta
            source = "restored from the arm cache" if o.weights else "from its committed record (no weights here)"
            self._say(f"{spec.label}: {source} ({spec.fp[:12]}; trained {meta.trained_at} on "
                      f"{meta.machine or meta.identity['device']} in {m.train_seconds:.1f} s): {m.held_out} acc "
                      f"{m.acc:.4f}, train acc {m.train_acc:.4f}, gap {m.gap:+.4f}")
            return
        if spec.fp in self.jobs:
            self.jobs[spec.fp].state = "done"
            self._postfix()
        self._say(f"{spec.label}: {m.held_out} acc {m.acc:.4f}, train acc {m.train_acc:.4f}, gap {m.gap:+.4f} "
                  f"(trained in {m.train_seconds:.1f} s)" + ("" if self.bar is not None else f" [{self.jobs_line()}]"))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
