"""Where jobs run: in this process, one at a time, or on a Ray cluster.

An engine takes `JobSpec`s with their resume states and hands back, as they
happen, `(spec, event)` pairs: each `Epoch` (with the state to save), then
`Finished`, or `Failed`. The driver does everything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from pipeline.core.contracts import TrainState
from pipeline.training.job import Data, JobSpec, run_job


@dataclass
class Failed:
    error: BaseException


class LocalEngine:
    """One job at a time in this process: nothing to start, no data to move. On one
    CPU this is also the fastest way (the CPU has no idle capacity to share)."""

    name = "this process"

    def __init__(self, data: Data, on_step: Callable[[int], None] | None = None):
        self.data, self.on_step = data, on_step
        self._job: tuple[JobSpec, Iterator] | None = None

    @property
    def slots(self) -> int:
        return 1

    def busy(self) -> int:
        return int(self._job is not None)

    def submit(self, spec: JobSpec, resume: TrainState | None) -> None:
        assert self._job is None, "the local engine runs one job at a time"
        self._job = (spec, run_job(spec, self.data, resume, self.on_step))

    def events(self) -> Iterator[tuple[JobSpec, object]]:
        """The next event of the running job (blocks while it trains)."""
        spec, gen = self._job
        try:
            event = next(gen)
        except Exception as exc:
            self._job = None
            yield spec, Failed(exc)
            return
        if type(event).__name__ == "Finished":
            self._job = None
        yield spec, event

    def where(self, spec: JobSpec) -> str:
        return "local"

    def cancel(self) -> None:
        self._job = None

    def close(self) -> None:
        pass
