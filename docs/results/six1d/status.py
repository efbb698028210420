"""Which studies of the six1d comparison are finished, and what they cost (no results: the
comparison is not finished)."""
import sqlite3
import collections
import sys
c = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else "six1d.db")
rows = c.execute("""select r.run_uuid, r.name, r.status, r.start_time, r.end_time from runs r
                    where r.run_uuid not in (select run_uuid from tags where key='mlflow.parentRunId')
                    and r.name like '% r%'""").fetchall()
done = collections.defaultdict(list)
for u, n, s, a, b in rows:
    arm = n.rsplit(" r", 1)[0]
    secs = c.execute("""select sum(m.value) from latest_metrics m join tags p on p.run_uuid=m.run_uuid
                        and p.key='mlflow.parentRunId' where p.value=? and m.key='time/total_s'""", (u,)).fetchone()[0]
    done[arm].append((n, s, secs or 0.0))
tot = 0.0
for arm, studies in sorted(done.items()):
    fin = [x for x in studies if x[1] == "FINISHED"]
    tot += sum(x[2] for x in studies)
    print(f"{arm:22s} finished {len(fin):2d}  other {len(studies) - len(fin)}  "
          f"training s per finished study {sum(x[2] for x in fin) / max(len(fin), 1):7.0f}")
print(f"training seconds so far: {tot:.0f}")
