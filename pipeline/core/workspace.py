"""One `dvc repro` or `dvc exp run` at a time in a workspace, with the params it started with.

`dvc exp run -S key=value` writes params.yaml before any stage runs, so a second
`dvc exp run` in the same workspace rewrites the file a first one is still
reading. The first stage of a DVC run here takes a copy of params.yaml
(`.dvc/tmp/cifar-ablate/params.yaml`) and notes the DVC process in `run.json`;
every later stage of that run reads the copy. A stage of another DVC run, while
that process lives, stops at once with one line: which run holds the workspace,
what DVC has already written into params.yaml for the refused run, how to undo
only that, and how to queue it instead. A stage run by hand (not under DVC)
reads params.yaml as it is.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from pipeline.core.errors import PipelineError

FOLDER = Path(".dvc") / "tmp" / "cifar-ablate"


def _dvc_process():
    """The `dvc` process this stage runs under (psutil.Process), or None."""
    import psutil

    try:
        for proc in psutil.Process(os.getpid()).parents():
            args = proc.cmdline()[:2]
            if any(os.path.basename(a) == "dvc" for a in args):
                return proc
    except psutil.Error:
        return None
    return None


def _holder(lock: Path) -> dict | None:
    """The DVC run that holds the workspace (its run.json), while its process lives."""
    import psutil

    try:
        held = json.loads(lock.read_text())
        proc = psutil.Process(held["pid"])
        if abs(proc.create_time() - held["created"]) < 1 and proc.status() != psutil.STATUS_ZOMBIE:
            return held
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        pass
    return None


def params_for_run(path: str | Path, root: Path | None = None) -> Path:
    """The params file a stage reads: `path` outside DVC; under DVC, the copy its run took."""
    from filelock import FileLock

    path = Path(path)
    folder = Path(root or Path.cwd()) / FOLDER
    me = _dvc_process()
    lock, copy = folder / "run.json", folder / "params.yaml"
    if me is None or not path.exists():
        held = _holder(lock) if lock.exists() else None
        if held is not None:  # a stage run by hand under a DVC run would write its outputs beside it
            raise PipelineError(refusal(held, path, copy))
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "run.lock")):
        held = _holder(lock)
        if held is not None and held["pid"] != me.pid:
            raise PipelineError(refusal(held, path, copy))
        if held is None:
            tmp = folder / ".params.yaml.tmp"
            shutil.copy2(path, tmp)
            os.replace(tmp, copy)
            lock.write_text(json.dumps({"pid": me.pid, "created": me.create_time(), "command": " ".join(me.cmdline()),
                                        "started": dt.datetime.now().isoformat(timespec="seconds")}))
    return copy


def changed_under_run(path: str | Path, root: Path | None = None) -> dict[str, str]:
    """Under DVC: the keys of `path` that differ from what this run started with (another
    `dvc exp run` wrote them, and was refused), with the values this run used; else {}."""
    from pipeline.core.schema import dotted, read_yaml, show

    copy = Path(root or Path.cwd()) / FOLDER / "params.yaml"
    if _dvc_process() is None or not copy.exists():
        return {}
    try:
        now, then = dotted(read_yaml(path)), dotted(read_yaml(copy))
    except PipelineError:
        return {}
    return {k: "null" if then.get(k) is None else show(then[k])
            for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)}


def refusal(held: dict, path: Path, copy: Path) -> str:
    """The one line a second DVC run gets: who holds the workspace, what DVC wrote for this
    run, how to undo only that, and how to queue the run instead."""
    from pipeline.core.schema import dotted, read_yaml, show

    command = held["command"].split(" dvc ", 1)[-1] if " dvc " in held["command"] else held["command"]
    try:
        now, then = dotted(read_yaml(path)), dotted(read_yaml(copy))
    except PipelineError:
        now = then = {}
    written = [k for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)]
    said = ""
    if written:
        back = " ".join(f"'{k}={show(then[k]) if then.get(k) is not None else 'null'}'" for k in written)
        queued = " ".join(f"-S '{k}={show(now[k]) if now.get(k) is not None else 'null'}'" for k in written)
        said = (f"; DVC already wrote this run's values into {path} ({', '.join(written)}): undo only that with "
                f"`python -m pipeline.params set {back}`, then queue it: `dvc exp run --queue {queued}` and "
                f"`dvc queue start`")
    else:
        said = "; queue this run instead: `dvc exp run --queue ...` and `dvc queue start`"
    return (f"another DVC run is using this workspace (pid {held['pid']}, `dvc {command}`, started {held['started']}); "
            f"it goes on with the params it started with{said}")
