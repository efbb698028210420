"""Start real tracking stores on loopback for tests and benchmarks: a PostgreSQL server from
Debian's packages (``make postgres`` installs them) and ``mlflow server`` on any backend.

    with postgres(tmpdir) as db_uri, mlflow_server(db_uri, artifacts) as uri:
        ...  # bnnsearch sweep --tracking-uri <uri>

PostgreSQL refuses to run as root: as root, the data directory is given to the ``postgres`` user
that Debian's package creates and the server runs as that user (``runuser``).
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> str | None:
    """Folder of Debian's PostgreSQL server binaries (newest version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _as_db_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait(ok, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ok():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


@contextlib.contextmanager
def postgres(database: str = "mlflow"):
    """A throwaway PostgreSQL server on 127.0.0.1 with one empty database; yields its SQLAlchemy URI."""
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): run `make postgres`")
    data = tempfile.mkdtemp(prefix="bnnsearch-pg-")  # under /tmp, reachable by the postgres user
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    proc = None
    try:
        subprocess.run(_as_db_user([f"{bindir}/initdb", "-D", data, "-U", "bnn", "--auth=trust", "-E", "UTF8"]),
                       check=True, capture_output=True, text=True)
        proc = subprocess.Popen(_as_db_user([f"{bindir}/postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1",
                                             "-k", data, "-c", "max_connections=200", "-c", "fsync=on"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        ready = [f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port), "-U", "bnn"]
        _wait(lambda: subprocess.run(ready, capture_output=True).returncode == 0, "postgres", proc)
        subprocess.run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "bnn", database],
                       check=True, capture_output=True, text=True)
        yield f"postgresql://bnn@127.0.0.1:{port}/{database}"
    finally:
        if proc is not None:  # fast shutdown (runuser does not pass signals on: ask pg_ctl)
            subprocess.run(_as_db_user([f"{bindir}/pg_ctl", "stop", "-D", data, "-m", "fast", "-w", "-t", "30"]),
                           capture_output=True)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: str, workers: int = 2):
    """``mlflow server`` on 127.0.0.1 over ``backend_uri``; yields its http URI."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
         artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            return True
        except OSError:
            return False
    try:
        _wait(healthy, "mlflow server", proc, timeout=120)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
