"""One rti unit at batch 16 (IMP and its reinitialisation control, one round each, cpu preset), its two chains alone
against as one stack of two (runs.sweep since 630249e), AB BA, each into an empty run cache. Ends in a ratio line."""
import os, sys, tempfile, time
from paper_repro.rti import RTISpec, rti_sweep, setting
cfg = RTISpec.fill("rti_fig1", "cpu", rounds=1)
def go(stack):
    os.environ["PAPER_REPRO_OUTPUTS"] = tempfile.mkdtemp()
    t = time.perf_counter(); s = rti_sweep(cfg, [setting(16)], stack=stack, progress=False); dt = time.perf_counter() - t
    ks = {r.record["stack"] for c in s.chains.values() for r in c.runs}
    print(f"stack={stack}: {dt:.1f} s, runs {sum(len(c.runs) for c in s.chains.values())}, record stack {ks}", flush=True); return dt
a1 = go(1); b1 = go(None); b2 = go(None); a2 = go(1)
print(f"ratio: IMP + reinit at batch 16, one round each, alone / as a stack of two = {(a1 + a2):.1f} / {(b1 + b2):.1f} = {(a1 + a2)/(b1 + b2):.2f}x")
