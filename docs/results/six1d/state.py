"""Keeps the six1d study's store in the repository, session by session (issue #12).

The study runs over many sessions on machines whose disk does not outlive a session: only what is
committed survives. ``save`` (run after the study stopped) writes one new chunk,
``state/chunk-NNN.tar.xz``, with what changed since the chunks before it:

- the MLflow SQLite rows added, changed (as remove + add) or removed, as sorted JSON lines, which
  xz compresses about 3x better than the database file (the first chunk also holds the schema);
- the files of ``mlartifacts/`` (run artifacts: configs, best_config.yaml) and ``out/`` (the
  noise-floor cache) that are new, changed or gone;
- the Ray state (``runs/<study>``) of every study the store marks as not finished, without the
  checkpoints of its trials that ended (``ray_files``): what ``--resume`` needs to continue it.
  Finished studies are read from the store alone.

``restore`` rebuilds the work folder's store from all chunks (the Ray state from the last one).
``save`` checks itself: it rebuilds into a temporary folder and compares every table's rows and
every file with the live store; if anything differs it removes its chunk and fails.

The store holds absolute artifact paths, so restore into the same work folder path
(``run.sh`` uses ``six1d`` beside the checkout). Standard library only.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import re
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = HERE / "state"
DB = "six1d.db"
FILE_DIRS = ("mlartifacts", "out")


def chunks() -> list[Path]:
    return sorted(STATE.glob("chunk-*.tar.xz"))


def schema(con: sqlite3.Connection) -> list[str]:
    return [sql for (sql,) in con.execute("select sql from sqlite_master where sql is not null "
                                          "and name not like 'sqlite_%' order by rowid")]


def table_rows(con: sqlite3.Connection) -> dict[str, collections.Counter]:
    """Every table's rows as canonical JSON strings (NaN-safe equality, sortable)."""
    out = {}
    for (t,) in con.execute("select name from sqlite_master where type='table' and name not like 'sqlite_%'"):
        rows = collections.Counter()
        for r in con.execute(f'select * from "{t}"'):
            if any(isinstance(v, bytes) for v in r):
                sys.exit(f"state.py: table {t} holds binary values, which this format does not keep")
            rows[json.dumps(list(r))] += 1
        out[t] = rows
    return out


def files(root: Path, dirs: list[str]) -> dict[str, str]:
    """relative path -> sha256 of every file under root/<dir> for each dir."""
    got = {}
    for d in dirs:
        for p in sorted((root / d).rglob("*")):
            if p.is_file() and not p.is_symlink():
                got[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return got


def ray_files(work: Path, study: str) -> dict[str, str]:
    """What ``--resume`` needs of an unfinished study's Ray folder: every file except the
    checkpoints of trials that every experiment snapshot in the folder (Ray's and bnnsearch's kept
    copy) marks TERMINATED. Ray restores none of those, and they are most of the folder (about
    3.7 MB a checkpoint for local_binary). An unreadable snapshot keeps every checkpoint."""
    d = work / "runs" / study
    ended: set[str] | None = None
    for f in [*d.glob("experiment_state-*.json"), *d.glob("bnnsearch_state/experiment_state-*.json")]:
        try:
            states = [json.loads(st) for st, _ in json.loads(f.read_bytes())["trial_data"]]
            done = {st["trial_id"] for st in states if st.get("status") == "TERMINATED"}
        except (OSError, ValueError, KeyError, TypeError):
            done = set()
        ended = done if ended is None else ended & done
    out = {}
    for rel, h in files(work, [f"runs/{study}"]).items():
        parts = Path(rel).parts  # runs, <study>, <trainable>_<trial id>_<n>_..., checkpoint_..., ...
        m = re.search(r"_([0-9a-f]{8})_\d+_", parts[2]) if len(parts) > 4 else None
        if m and parts[3].startswith("checkpoint_") and m.group(1) in (ended or set()):
            continue
        out[rel] = h
    return out


def unfinished_studies(con: sqlite3.Connection) -> list[str]:
    return sorted(v for (v,) in con.execute(
        "select t.value from tags t join runs r on r.run_uuid = t.run_uuid join tags k on k.run_uuid = r.run_uuid "
        "where t.key = 'bnnsearch.study' and k.key = 'bnnsearch.kind' and k.value = 'study' "
        "and r.status != 'FINISHED' and r.lifecycle_stage = 'active'"))


def restore(work: Path) -> None:
    """Rebuild work/six1d.db, work/mlartifacts, work/out from all chunks; work/runs from the last."""
    if (work / DB).exists():
        sys.exit(f"state.py: {work / DB} exists; restore only into a folder without a store")
    cs = chunks()
    if not cs:
        sys.exit(f"state.py: no chunks in {STATE}")
    work.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(work / DB)
    for i, c in enumerate(cs):
        with tarfile.open(c, "r:xz") as tar:
            meta = json.load(tar.extractfile("meta.json"))
            if i == 0:
                for sql in meta["schema"]:
                    con.execute(sql)
            cols = {}
            for line in tar.extractfile("rows.jsonl"):
                t, op, row = json.loads(line)
                if t not in cols:
                    cols[t] = [r[1] for r in con.execute(f'pragma table_info("{t}")')]
                if op == "-":
                    cur = con.execute(f'delete from "{t}" where rowid = (select rowid from "{t}" where '
                                      + " and ".join(f'"{c}" is ?' for c in cols[t]) + " limit 1)", row)
                    if cur.rowcount != 1:
                        sys.exit(f"state.py: {c.name} removes a row of {t} that is not there: {row}")
                else:
                    con.execute(f'insert into "{t}" values ({",".join("?" * len(row))})', row)
            last = i == len(cs) - 1
            for m in tar.getmembers():
                if m.name.startswith("files/") and (last or not m.name.startswith("files/runs/")):
                    m.name = m.name[len("files/"):]
                    tar.extract(m, work, filter="data")
            for rel in meta["removed"]:
                (work / rel).unlink(missing_ok=True)
        con.commit()
    con.close()


def save(work: Path) -> Path:
    if subprocess.run(["pgrep", "-f", "bnnsearch compare spaces/"], capture_output=True).returncode == 0:
        sys.exit("state.py: the study is running; stop it first (Ctrl-C, see run.sh)")
    live = sqlite3.connect(f"file:{work / DB}?mode=ro", uri=True)
    todo = unfinished_studies(live)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        if chunks():
            restore(base)
            bcon = sqlite3.connect(base / DB)
            if schema(bcon) != schema(live):
                sys.exit("state.py: the store's schema changed since the last chunk (another MLflow version?)")
            brows, bfiles = table_rows(bcon), files(base, list(FILE_DIRS))
            bcon.close()
        else:
            brows, bfiles = {}, {}
        rows, now = table_rows(live), files(work, list(FILE_DIRS))
        lines = []
        for t in sorted(rows):
            old = brows.get(t, collections.Counter())
            lines += sorted(f'["{t}", "-", {k}]' for k in (old - rows[t]).elements())
            lines += sorted(f'["{t}", "+", {k}]' for k in (rows[t] - old).elements())
        changed = sorted(p for p, h in now.items() if bfiles.get(p) != h)
        changed += sorted(p for s in todo for p in ray_files(work, s))
        meta = {"schema": schema(live), "removed": sorted(set(bfiles) - set(now)), "unfinished_studies": todo}
    STATE.mkdir(exist_ok=True)
    out = STATE / f"chunk-{len(chunks()):03d}.tar.xz"
    with tarfile.open(out, "w:xz", preset=9) as tar:
        for name, data in (("meta.json", json.dumps(meta).encode()), ("rows.jsonl", "\n".join(lines).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for rel in changed:
            tar.add(work / rel, arcname=f"files/{rel}")
    try:
        check(work, live, todo)
    except SystemExit:
        out.unlink()
        raise
    print(f"{out}: {len(lines)} rows, {len(changed)} files, {out.stat().st_size / 1e6:.2f} MB; "
          f"unfinished studies kept for --resume: {', '.join(todo) or 'none'}")
    return out


def check(work: Path, live: sqlite3.Connection, todo: list[str]) -> None:
    """Rebuild from all chunks and compare with the live store; exits on the first difference."""
    with tempfile.TemporaryDirectory() as tmp:
        back = Path(tmp)
        restore(back)
        bcon = sqlite3.connect(back / DB)
        if schema(bcon) != schema(live) or table_rows(bcon) != table_rows(live):
            sys.exit("state.py: the rebuilt store differs from the live one; chunk removed")
        ray = {p: h for s in todo for p, h in ray_files(work, s).items()}
        if files(back, list(FILE_DIRS)) != files(work, list(FILE_DIRS)) or files(back, ["runs"]) != ray:
            sys.exit("state.py: the rebuilt files differ from the live ones; chunk removed")
        bcon.close()


def main() -> None:
    global STATE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["save", "restore"])
    ap.add_argument("--work", type=Path, required=True, help="the study's work folder (run.sh's)")
    ap.add_argument("--state", type=Path, default=STATE, help=f"the chunks' folder (default {STATE})")
    a = ap.parse_args()
    STATE = a.state.resolve()
    save(a.work) if a.action == "save" else restore(a.work)


if __name__ == "__main__":
    main()
