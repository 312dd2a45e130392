"""Servers the tests start on 127.0.0.1 and stop again: PostgreSQL (as an
unprivileged user, in a temporary folder), an MLflow tracking server on it, and
a Ray head node.

`.ci/run` starts them once for the whole suite (`python -m tests.services`,
which prints their addresses as shell exports and keeps them up until it is
stopped) and names them in CIFAR_ABLATE_TEST_POSTGRES (a postgresql:// URI),
CIFAR_ABLATE_TEST_MLFLOW (the server's http:// URL) and CIFAR_ABLATE_TEST_RAY
(the head's address) with CIFAR_ABLATE_TEST_RAY_TOKEN; a fixture whose variable is unset starts its own."""
from __future__ import annotations

import os
import pwd
import secrets
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
                        port: int | None = None, auth: tuple[str, str] | None = None) -> tuple[str, callable]:
    """`mlflow server` on 127.0.0.1 with `backend` as its store, serving artifacts from
    `artifacts`: (base URL, stop). With `auth` (user, password), MLflow's basic-auth app
    guards it, that user its admin, every other request refused."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    extra = []
    if auth:
        ini = log.parent / "basic_auth.ini"
        ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                       f"database_uri = sqlite:///{log.parent / 'basic_auth.db'}\nadmin_username = {auth[0]}\n"
                       f"admin_password = {auth[1]}\n"
                       f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        extra = ["--app-name", "basic-auth"]
    with open(log, "w") as out:
        proc = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", backend, "--artifacts-destination",
                                 str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 *extra], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

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


def start_ray_head(num_cpus: int = 2) -> tuple[str, str, callable]:
    """A Ray head node on 127.0.0.1 (`ray start --head`) with token authentication, as a
    cluster that a study is sent to with RAY_ADDRESS: (address, token, stop). A client
    needs RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN (or ~/.ray/auth_token)."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port, token = free_port(), secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", **ray_client_env(token))
    # --block: this head lives as long as that one command, and stopping the command stops
    # exactly this head (`ray stop` would stop every Ray of this user on the machine)
    log = Path(tempfile.mkdtemp(prefix="cifar-ablate-ray-")) / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                                 "--port", str(port), "--num-cpus", str(num_cpus), "--include-dashboard", "false",
                                 "--disable-usage-stats"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def stop():
        if proc.poll() is None:
            proc.terminate()  # the command stops its head's processes
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of it is left
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        shutil.rmtree(log.parent, ignore_errors=True)

    deadline = time.monotonic() + 180
    while b"block forever" not in log.read_bytes():  # printed once the head is up
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-2000:]
            stop()
            raise RuntimeError(f"ray start --head failed:\n{text}")
        time.sleep(0.2)
    return f"127.0.0.1:{port}", token, stop


def ray_client_env(token: str) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def main() -> None:
    """Start PostgreSQL, an MLflow server on it and a Ray head; print them as shell
    exports, then keep them up until SIGTERM or SIGINT, and stop them."""
    # both signals end the wait below through `finally` (also while starting up); a
    # handler, unlike a blocked signal mask, is not inherited by the servers
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stops = []
    try:
        pg, stop = start_postgres()
        stops.append(stop)
        folder = Path(tempfile.mkdtemp(prefix="cifar-ablate-mlflow-"))
        stops.append(lambda: shutil.rmtree(folder, ignore_errors=True))
        base, stop = start_mlflow_server(pg, folder / "artifacts", folder / "mlflow.log")
        stops.append(stop)
        ray_address, token, stop = start_ray_head()
        stops.append(stop)
        print(f"export CIFAR_ABLATE_TEST_POSTGRES={pg}\nexport CIFAR_ABLATE_TEST_MLFLOW={base}\n"
              f"export CIFAR_ABLATE_TEST_RAY={ray_address}\nexport CIFAR_ABLATE_TEST_RAY_TOKEN={token}\n# ready",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # a second signal must not cut the clean-up short (and leave a server running)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for stop in reversed(stops):
            stop()


if __name__ == "__main__":
    main()
