"""Servers the tests start on 127.0.0.1 and stop again: PostgreSQL (as an
unprivileged user, in a temporary folder) and an MLflow tracking server.

`.ci/run` may start them once for the whole suite and name them in
CIFAR_ABLATE_TEST_POSTGRES (a postgresql:// URI); otherwise each fixture starts
its own."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(PG_BIN.glob("*/bin"), reverse=True)
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (`.ci/run` does)")
    return str(versions[0] / name)


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def start_postgres() -> tuple[str, callable]:
    """A PostgreSQL server on 127.0.0.1 holding an empty database, in a temporary
    folder: (URI, stop). PostgreSQL refuses to run as root, so as root it runs as
    `nobody` (in a folder of its own under /tmp, which that user can reach)."""
    user = "nobody" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="cifar-ablate-pg-"))
    data = folder / "pgdata"
    if user:
        os.chown(folder, pwd.getpwnam(user).pw_uid, -1)
    port = free_port()
    subprocess.run(_as_user([_pg_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"],
                            user), check=True, capture_output=True)
    subprocess.run(_as_user([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "pg.log"), "-w", "-o",
                             f"-h 127.0.0.1 -p {port} -k {folder}", "start"], user), check=True, capture_output=True)
    subprocess.run([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                   check=True, capture_output=True)

    def stop():
        subprocess.run(_as_user([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], user),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

    return f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow", stop


def start_mlflow_server(backend: str, artifacts: Path, log: Path, start_s: float = 90,
                        port: int | None = None) -> tuple[str, callable]:
    """`mlflow server` on 127.0.0.1 with `backend` as its store, serving artifacts from
    `artifacts`: (base URL, stop)."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "w") as out:
        proc = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", backend, "--artifacts-destination",
                                 str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    deadline = time.monotonic() + start_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return base, stop
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    stop()
    raise RuntimeError(f"mlflow server did not answer within {start_s} s:\n{log.read_text()[-3000:]}")
