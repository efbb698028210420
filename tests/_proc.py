"""Driving the CLI as a user does: a process group of its own (a terminal's Ctrl-C reaches the
whole group), output read line by line until a marker."""
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
