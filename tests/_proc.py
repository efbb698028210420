"""Driving the CLI as a user does: a process group of its own (a terminal's Ctrl-C reaches the
whole group), output read line by line until a marker."""
import socket
import subprocess
import sys
import time


def start_cli(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "bnnsearch.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def read_until(proc, marker: str, timeout: float = 300) -> list[str]:
    """Lines up to and including the first that starts with marker; fails if the process ends or
    the timeout passes first."""
    seen, t0 = [], time.time()
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(marker):
            return seen
        assert time.time() - t0 < timeout, "".join(seen)
    raise AssertionError(f"ended before {marker!r}:\n" + "".join(seen)[-3000:])


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(cwd, stderr=subprocess.STDOUT) -> tuple[subprocess.Popen, int]:
    """`bnnsearch dashboard` served from ``cwd`` on a free port: (process, port)."""
    port = free_port()
    return subprocess.Popen([sys.executable, "-m", "bnnsearch.cli", "dashboard", "--port", str(port)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=stderr, text=True), port
