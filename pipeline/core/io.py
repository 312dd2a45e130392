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
    tmp = temp_sibling(path)
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


def temp_sibling(path: Path) -> Path:
    """A new empty folder next to `path` (whose folder must exist), named so that
    `sweep()` removes it once this process is dead; sweeps that folder first."""
    sweep(path.parent)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{host_tag()}-{os.getpid()}.", suffix=".tmp", dir=path.parent))


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


def write_bytes(path, data: bytes) -> None:
    """`data` into the file at `path`, on disk when this returns. A failed write is an
    OSError naming `path` and, in `needed`, the bytes it was writing (a full disk says
    how much it lacked room for)."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        err = OSError(exc.errno, exc.strerror, str(path))
        err.needed = len(data)
        raise err from None


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def file_digest(path, algo: str) -> str:
    """The hex digest of the file at `path`; `algo` is a hashlib name (sha256, md5, ...)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


# ioctl(FICLONE): a copy that shares the blocks until one side is written (btrfs, xfs, ...)
_FICLONE = 0x40049409


def clone_file(src: Path, dest: Path) -> None:
    """`dest`, an independent copy of `src`: a reflink (copy-on-write, no extra space)
    where the file system has them, else a plain copy. Never a hard link: a record
    once made must not change when another copy is edited."""
    try:
        import fcntl

        with open(src, "rb") as s, open(dest, "wb") as d:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        shutil.copystat(src, dest)
    except (OSError, ImportError):
        shutil.copy2(src, dest)
