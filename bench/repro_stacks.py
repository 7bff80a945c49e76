"""The table of `bench/repro_stacks.sh`: cold notebook times without and with stacks, and what stacked.

    python bench/repro_stacks.py ROOT

Reads ROOT/times.tsv and the run records of both modes (ROOT/<mode>/runs/**/config.json: each stores its `wall_time`
and its `stack`, the number of runs it was trained with, 1 when alone). A run belongs to the notebook during whose
papermill run (or slice: `SLICE=`) its `done` file was written; a mode's time is the sum of its slices. Per notebook: the two wall times and their ratio, the runs computed, how
many of them were trained in a stack and the largest stack, and per kind the mean time a run took in a stack against
the same runs alone: each run stacked in the `stack` half is paired with its own record (same folder: same cache key)
in the `nostack` half. A stacked run's `wall_time` is already its share, the stack's wall time over its K members
(`runs._compute_together`). Ends in a ratio line over all timed notebooks.
"""
import json, sys, datetime as dt
from collections import defaultdict
from pathlib import Path

def fmt(s: float) -> str:
    s = round(s); return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"

def runs_of(root: Path, mode: str):
    "Every finished run of a mode: (finished at, kind, wall seconds of this run, stack size, folder name)."
    out = []
    for cfg in (root/mode/"runs").rglob("config.json"):
        done = cfg.parent/"done"
        if not done.exists(): continue
        c = json.loads(cfg.read_text())
        t = dt.datetime.fromisoformat(done.read_text().split("\n")[0])
        k = max(int(c.get("stack", 1)), 1)
        out.append((t, c["kind"], float(c["wall_time"]), k, cfg.parent.name))
    return out

def main(root: Path):
    rows = [l.split("\t") for l in (root/"times.tsv").read_text().splitlines() if l.strip()]
    secs, spans, done, slices = defaultdict(int), defaultdict(list), set(), defaultdict(int)
    for nb, mode, s, end, *part in rows:            # a 5th column `slice`: a slice that did not finish the notebook
        end = dt.datetime.fromisoformat(end.replace("Z", "+00:00")); s = int(s)
        secs[nb, mode] += s; slices[nb, mode] += 1
        spans[nb, mode].append((end - dt.timedelta(seconds=s + 1), end + dt.timedelta(seconds=1)))
        if part != ["slice"]: done.add((nb, mode))
    secs = {k: v for k, v in secs.items() if k in done}
    runs = {m: runs_of(root, m) for m in ("nostack", "stack")}
    def mine(nb, mode): return [r for r in runs[mode] if any(lo <= r[0] <= hi for lo, hi in spans[nb, mode])]
    nbs = list(dict.fromkeys(nb for nb, *_ in rows))
    alone = {r[4]: r[2] for r in runs["nostack"]}            # each run (folder) as computed alone, by any notebook
    print("| notebook | cold, no stacks | cold, stacks | ratio | runs computed | stacked (largest K) | the stacked runs by kind: s a run alone → in a stack |")
    print("|---|---|---|---|---|---|---|")
    tot = [0, 0]
    for nb in nbs:
        if (nb, "nostack") not in secs or (nb, "stack") not in secs:
            print(f"| `{nb}` | {fmt(secs[nb, 'nostack']) if (nb, 'nostack') in secs else '…'} | "
                  f"{fmt(secs[nb, 'stack']) if (nb, 'stack') in secs else '…'} | | | | (unfinished) |"); continue
        a, b = secs[nb, "nostack"], secs[nb, "stack"]; tot[0] += a; tot[1] += b
        st, al = mine(nb, "stack"), mine(nb, "nostack")
        if any(r[3] > 1 for r in al): sys.exit(f"{nb}: runs of the no-stacks half were stacked: PAPER_REPRO_STACK=1 did not turn stacks off")
        n_st = sum(r[3] > 1 for r in st); kmax = max([r[3] for r in st], default=1)
        pairs = defaultdict(list)
        for r in st:
            if r[3] > 1 and r[4] in alone: pairs[r[1]].append((alone[r[4]], r[2]))
        kinds = "; ".join(f"{k} ×{len(v)} {sum(a for a, _ in v)/len(v):.1f} → {sum(b for _, b in v)/len(v):.1f}" for k, v in sorted(pairs.items()))
        cut = f" (in {slices[nb, 'nostack']} and {slices[nb, 'stack']} slices)" if max(slices[nb, "nostack"], slices[nb, "stack"]) > 1 else ""
        print(f"| `{nb}`{cut} | {fmt(a)} | {fmt(b)} | {a / b:.2f}× | {len(st)} | {n_st} (K ≤ {kmax}) | {kinds or '—'} |")
    if tot[1]: print(f"ratio: no stacks / stacks over {sum(1 for nb in nbs if (nb, 'stack') in secs and (nb, 'nostack') in secs)} notebooks "
                     f"= {fmt(tot[0])} / {fmt(tot[1])} = {tot[0] / tot[1]:.2f}×")

if __name__ == "__main__":
    if len(sys.argv) != 2: sys.exit(__doc__)
    main(Path(sys.argv[1]))
