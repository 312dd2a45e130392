"""Atomic outputs: a file or folder appears whole, or not at all; and what a killed
writer left behind is swept away by the next one."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

# A temporary sibling is named `.<name>.<host>-<pid>.<random>.tmp`, so the next
# writer can tell whether the process that made it is still alive.
_TMP = re.compile(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def host_tag() -> str:
    return socket.gethostname().replace(".", "_") or "host"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path; on success rename it onto `path`.

    Works for files and folders. On any exception the temporary is removed and
    whatever stood at `path` before is left untouched; after a kill -9 it is
    removed by `sweep()` (called by the next writer into the same folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{host_tag()}-{os.getpid()}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target}")
        if path.is_dir() and not path.is_symlink():
            old = tmp / ".old"
            os.replace(path, old)  # a folder cannot be renamed onto a non-empty one
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed writers left in `folder` (those of live
    processes on this host, and of other hosts, are kept). Returns what went."""
    gone = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return gone
    for entry in entries:
        m = _TMP.match(entry.name)
        if m and m["host"] == host_tag() and not pid_alive(int(m["pid"])):
            shutil.rmtree(entry.path, ignore_errors=True)
            gone.append(Path(entry.path))
    return gone


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (a zombie, killed but not yet reaped, does not)."""
    import psutil

    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else
        return True


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def link_or_copy(src: Path, dest: Path) -> None:
    """A hard link where the file system allows one (no extra space), else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def local_path(uri: str) -> Path | None:
    """The folder on this machine behind an artifact URI; None for a remote store."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def link_in_place(src: Path, dest: Path) -> bool:
    """Replace `dest`, a copy of what `src` holds, by a hard link to `src`: one file on disk.
    Only for a `src` that is never changed (read-only, replaced whole when rewritten): the
    link would carry a change into `dest`. False (the copy stays) where `src` is writable,
    or on another file system."""
    try:
        if not dest.is_file() or os.path.samefile(src, dest):
            return False
        if os.stat(src).st_mode & 0o222:
            return False
    except OSError:
        return False
    tmp = dest.with_name(f".{dest.name}.link")
    try:
        tmp.unlink(missing_ok=True)  # left by a killed flusher
        os.link(src, tmp)
        os.replace(tmp, dest)
        return True
    except OSError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
