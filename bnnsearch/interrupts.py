"""Ctrl-C for the whole command, installed first thing by the CLI.

The first SIGINT raises KeyboardInterrupt and is also *remembered*: a library that swallows the
exception (a bare ``except:`` around an optional import, seen during start-up) cannot make an
interrupt look like nothing, because the study checks ``check()`` before it records anything,
after Ray Tune's loop, and between the studies of a comparison. A second SIGINT — or one that
reaches this handler while Ray Tune's own handler has taken the first — exits at once (130).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

_state = {"count": 0, "in_tune": False, "what": "the command", "defer": False, "teardown": 0}


def handler(sig, frame):
    _state["count"] += 1
    if _state["defer"] and _state["count"] == 1:
        return  # inside deferred() or held(): remembered, acted on when the block ends
    if _state["count"] > 1 or _state["in_tune"]:
        print(f"\nbnnsearch: second interrupt: exiting now; {_state['what']} is incomplete, rerun with --resume to "
              "finish it", file=sys.stderr, flush=True)
        os._exit(130)
    raise KeyboardInterrupt


def install() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


class deferred:
    """A block a KeyboardInterrupt must not cut in half (the start-up imports: a Ctrl-C inside
    ``import torch`` has aborted the interpreter, and one inside an extension's init leaves CPython
    believing it was unhandled). The first Ctrl-C in it is remembered and raised when it ends."""

    def __enter__(self):
        _state["defer"] = True
        return self

    def __exit__(self, exc_type, *exc):
        _state["defer"] = False
        if exc_type is None and _state["count"]:
            raise KeyboardInterrupt
        return False


class held(deferred):
    """A record that must be written whole (a finished study's best config, tags and end): the
    first Ctrl-C in it is remembered and *not* raised when it ends, so the record completes and
    the command stops at its next ``check()`` (a comparison before its next study). A second
    Ctrl-C still exits at once."""

    def __exit__(self, exc_type, *exc):
        _state["defer"] = False
        return False


def teardown_handler(sig, frame):
    """SIGINT once the command has returned (``finished``): only the interpreter's teardown is
    left (Ray's atexit shutdown), where a KeyboardInterrupt printed a traceback under a finished
    command. One line; a second Ctrl-C exits at once."""
    _state["teardown"] += 1
    if _state["teardown"] > 1:
        os._exit(130)
    print("\nbnnsearch: the command has finished; shutting down (Ctrl-C again to exit now)", file=sys.stderr, flush=True)


def finished() -> None:
    """The command has returned: SIGINT goes to ``teardown_handler`` from now on. A handler, not
    a flag, so the next ``install()`` (a command run again in the same process, as tests do)
    restores the usual one."""
    if threading.current_thread() is threading.main_thread():
        _state["teardown"] = 0
        signal.signal(signal.SIGINT, teardown_handler)


def clear() -> None:
    """Forget a Ctrl-C the command took as its own way to stop (the served dashboard)."""
    _state["count"] = 0


def pending() -> bool:
    return _state["count"] > 0


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came (even one a library swallowed)."""
    if _state["count"]:
        raise KeyboardInterrupt


class tune_loop:
    """Around Ray Tune's loop: Ray's handler takes the first SIGINT and then restores the handler it
    found (ours), so ours firing inside the loop is the second. Ray never restores its handler when
    no signal came: on exit, ``got`` tells whether Ray received one, and ours is reinstalled so no
    stale Ray handler swallows a later Ctrl-C. (With TUNE_DISABLE_SIGINT_HANDLER=1 Ray installs
    none: the first Ctrl-C then raises KeyboardInterrupt here as anywhere else.)"""

    def __init__(self, what: str):
        self.what, self.got = what, False
        self.ray_handles = not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0"))

    def __enter__(self):
        _state["what"] = self.what
        install()
        _state["in_tune"] = self.ray_handles
        return self

    def __exit__(self, *exc):
        _state["in_tune"] = False
        if threading.current_thread() is threading.main_thread():
            self.got = self.ray_handles and signal.getsignal(signal.SIGINT) is handler
            install()
        if self.got:
            _state["count"] += 1
        return False
