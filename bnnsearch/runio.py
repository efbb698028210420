"""Files of one training run: ``config.yaml``, ``metrics.jsonl``, ``cost.json``."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (config imports data, which writes its cache with write_whole)
    from .config import RunConfig


def finite_or_none(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def write_whole(path: Path, write: Callable[[Path], object], unique: bool = False) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a hidden sibling file that then
    replaces ``path`` in one rename (atomic on POSIX), so a Ctrl-C or a kill mid-write leaves the
    previous file, never a truncated one; a failed write removes the temporary. ``unique`` names the
    temporary per call, for processes that may write the same path at once (else a kill's leftover
    is overwritten next time). The temporary keeps ``path``'s suffix: ``np.savez`` appends ``.npz``
    to a name without it."""
    path = Path(path)
    tag = f"-{uuid.uuid4().hex}" if unique else ""
    tmp = path.with_name(f".{path.stem}{tag}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_whole(path: Path, text: str) -> None:
    write_whole(path, lambda tmp: tmp.write_text(text))


def copy_whole(src: Path, dst: Path) -> None:
    write_whole(dst, lambda tmp: shutil.copyfile(src, tmp))


@contextlib.contextmanager
def flocked(path: Path, wait: bool = True):
    """An exclusive ``flock`` on ``path`` (a folder, or a file made if missing and never removed:
    removing a lock file races with its next taker) held for the block; the operating system
    drops it when the process ends, even on SIGKILL. ``wait=False``: BlockingIOError at once if
    another process holds it. Without ``fcntl`` (not POSIX) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)  # releases the lock


def check_out_dir(path: Path, label: str, create: bool = False) -> None:
    """An output folder a command will write into, checked before any work (a user's mistake
    found after an hour of training loses that hour): a file in its place or above it, or a
    nearest existing folder that is not writable, is an error that starts with ``label`` (the
    flag and the value as given, e.g. ``--out runs/x``). Without ``create`` nothing is created
    (an error found later must leave nothing behind); with it the folder is made now. A check,
    not a proof: a write can still fail (e.g. under /proc as root), where callers name the flag too."""
    from .errors import UserError

    up = path
    while not up.exists():
        up = up.parent
    if not up.is_dir():
        raise UserError(f"{label}: is a file, not a directory" if up == path
                        else f"{label}: cannot create the directory ({up} is a file)")
    if not os.access(up, os.W_OK | os.X_OK):
        raise UserError(f"{label}: cannot create or write there ({up} is not writable)")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{label}: cannot create the directory ({e.strerror})") from None


def check_out_owner(path: Path, file: str, key: str, owner: str, what: str, label: str) -> None:
    """An output folder that already holds ``file`` written for another ``what`` (its JSON
    ``key`` is not ``owner``) is refused: this command's outputs would overwrite the other's
    (their copy in MLflow stays; the files a user reads would not). The same one — a rerun or a
    resume — writes over its own; a file that is not such JSON is not judged."""
    import json

    from .errors import UserError

    f = path / file
    if not f.is_file():
        return
    try:
        found = json.loads(f.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return
    if found is not None and found != owner:
        raise UserError(f"{label}: holds the outputs of {what} {found!r} ({f.name}); give another --out, or remove them")


def check_out_file(path: Path, label: str) -> None:
    """An output file a command will write, checked before any work as ``check_out_dir``
    checks its folder (nothing is created); a folder in its place is an error too."""
    from .errors import UserError

    if path.is_dir():
        raise UserError(f"{label}: is a directory; give a file name")
    if path.parent.is_file():  # (check_out_dir would call the folder, not the file, a file)
        raise UserError(f"{label}: cannot create the directory ({path.parent} is a file)")
    check_out_dir(path.parent, label)


def write_out(path: Path, label: str, write: Callable[[Path], object]) -> None:
    """Write an output file whole (``write_whole``), its folder made if missing; a write that
    fails (a full disk; under /proc as root, where the access check passes) is a one-line error
    that starts with ``label``, and leaves neither the file nor a temporary."""
    from .errors import UserError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, write)
    except OSError as e:
        raise UserError(f"{label}: cannot write there ({e.strerror or e})") from None


def write_config(out: Path, cfg: RunConfig) -> None:
    from .config import dump

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump(cfg))


class MetricsWriter:
    """Appends one JSON object per epoch (non-finite floats become null: strict JSON)."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            path.write_text("")

    def __call__(self, metrics: dict) -> None:
        row = {k: finite_or_none(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
