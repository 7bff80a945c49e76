"""paper_repro.runs.sweep: every executor gives serial's results; a killed sweep recomputes only its unfinished runs;
two processes that need one run compute it once; bad executors and missing extras are clear errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
import torch

import paper_repro.runs as runs
from paper_repro.models import same_state
from paper_repro.runs import STATS, Result, cached_run, run_counts, sweep

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.heavy   # starts processes
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module: send it by value


def train_unit(c):
    """One cached run: a small CNN on the digits (convolutions: their results depend on the thread count), with a
    checkpoint per epoch so a killed run resumes. `sleep` (seconds after training, so that a kill lands mid-sweep) is
    not part of the run's configuration: a run that slept and one that did not are the same run."""
    from paper_repro.data import load_dataset
    from paper_repro.masks import random_mask
    from paper_repro.models import get_model
    from paper_repro.train import fit
    from paper_repro.tickets import arch_for

    def run(config, workdir):
        data = {s: load_dataset("digits", s) for s in ("train", "test")}
        net = get_model(**arch_for("digits", "small-cnn", seed=config["seed"]))
        mask = random_mask(net, config["density"], seed=config["seed"])
        hist = fit(net, data, dict(optimizer="sgd", lr=0.05, momentum=0.9, epochs=config["epochs"], batch_size=64),
                   mask=mask, seed=config["seed"], checkpoint=workdir/runs.CHECKPOINT, progress=False)
        if sleep: time.sleep(sleep)
        return Result(hist, tensors=dict(state=net.state_dict()), info=dict(pid=os.getpid()))
    c = dict(c)
    root, sleep = c.pop("root"), c.pop("sleep", 0)
    r = cached_run("unit", c, run, root=root)
    return r.key, float(r.history.query("split == 'test' and metric == 'acc'").value.iloc[-1])


def units(root, n=4, **extra):
    return [dict(density=d, seed=s, epochs=2, root=str(root), **extra) for d, s in zip((0.5, 0.3, 0.2, 0.1, 0.4, 0.6)[:n], range(n))]


def finished_runs(root: Path, kind: str) -> list[Path]:
    """The stored runs of `kind`: final folders with `done`. A `.partial` folder with `done` (killed between writing
    `done` and the rename) is not one: the rerun finishes it, and counts it as computed, not loaded."""
    return sorted(p for p in root.glob(f"{kind}-*") if p.suffix != ".partial" and (p/"done").exists()) if root.exists() else []


def same_runs(a: Path, b: Path, keys):
    for k in keys:
        ra, rb = (runs.Run("unit", k, r/f"unit-{k}", True) for r in (a, b))
        pd.testing.assert_frame_equal(ra.history.drop(columns="time"), rb.history.drop(columns="time"))
        assert same_state(ra.tensors["state"], rb.tensors["state"]), k


def test_executors_match_serial(tmp_path):
    """serial, pool and submitit's local executor compute the same runs bit for bit (one thread per unit each)."""
    pytest.importorskip("submitit")
    roots = {e: tmp_path/e for e in ("serial", "pool", "submitit")}
    opts = dict(serial={}, pool=dict(workers=2), submitit=dict(cluster="local", folder=tmp_path/"jobs"/"%j", timeout_min=10))
    out, counts = {}, {}
    for e, r in roots.items():
        s0 = dict(STATS)
        out[e] = sweep(units(r), train_unit, e, threads=1, progress=False, **opts[e])
        counts[e] = run_counts(s0)
    assert out["pool"] == out["serial"] and out["submitit"] == out["serial"]
    assert all(c == dict(loaded=0, computed=4) for c in counts.values()), counts
    keys = [k for k, _ in out["serial"]]
    same_runs(roots["serial"], roots["pool"], keys)
    same_runs(roots["serial"], roots["submitit"], keys)
    # the pool's workers ran in other processes, and split the work
    pids = {runs.Run("unit", k, roots["pool"]/f"unit-{k}", True).info["pid"] for k in keys}
    assert os.getpid() not in pids and len(pids) == 2


def test_killed_sweep_recomputes_only_unfinished_runs(tmp_path):
    """A pool sweep of 6 runs is killed (SIGKILL to its process group) once 2 runs are done; the rerun loads those 2,
    computes the other 4, and its results equal an uninterrupted sweep's."""
    root = tmp_path/"runs"
    script = textwrap.dedent(f"""
        import sys, cloudpickle; sys.path.insert(0, {str(ROOT/'tests')!r})
        import test_sweep as t
        from paper_repro.runs import sweep
        sweep(t.units({str(root)!r}, n=6, sleep=1.0), t.train_unit, "pool", workers=2, threads=1, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, cwd=ROOT)
    done = lambda: finished_runs(root, "unit")
    t0 = time.time()
    while len(done()) < 2 and proc.poll() is None and time.time() - t0 < 120: time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    finished = len(done())
    assert 2 <= finished < 6, f"{finished} runs finished before the kill"
    s0 = dict(STATS)
    again = sweep(units(root, n=6), train_unit, "serial", threads=1, progress=False)     # (no sleep: the same runs)
    assert run_counts(s0) == dict(loaded=finished, computed=6 - finished)
    print(f"killed with {finished} of 6 runs finished; the rerun loaded {finished} and computed {6 - finished}")
    fresh = sweep(units(tmp_path/"fresh", n=6), train_unit, "serial", threads=1, progress=False)
    assert again == fresh
    same_runs(root, tmp_path/"fresh", [k for k, _ in again])
    assert not list(root.glob("*.partial"))


def imp_unit(c):
    "One IMP chain (LeNet on the digits to 0.8⁶, 6 trained rounds of 1 epoch, each a cached run): its rounds' accuracies."
    import paper_repro.imp as imp_mod
    from paper_repro.imp import imp
    from paper_repro.tickets import arch_for
    if c.get("slow") and not hasattr(imp_mod.fit, "slowed"):         # slow each round down, so a kill lands mid-chain
        fit = imp_mod.fit
        imp_mod.fit = lambda *a, **k: (time.sleep(c["slow"]), fit(*a, **k))[1]
        imp_mod.fit.slowed = True
    r = imp(arch_for("digits", "lenet-300-100", seed=c["seed"]), "digits", 0.8**6,
            dict(optimizer="sgd", lr=0.05, momentum=0.9, epochs=1, batch_size=64), seed=c["seed"], progress=False, root=c["root"])
    return r.rounds.acc.tolist()


def test_killed_imp_sweep_resumes_at_the_last_finished_round(tmp_path):
    """Two IMP chains in a pool, killed once 4 of their 12 rounds are stored: the rerun loads exactly the stored
    rounds, trains only the others (it resumes each chain after its last finished round), and ends as a fresh sweep."""
    root = tmp_path/"runs"
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT/'tests')!r})
        import test_sweep as t
        from paper_repro.runs import sweep
        sweep([dict(seed=s, root={str(root)!r}, slow=0.5) for s in (0, 1)], t.imp_unit, "pool", workers=2, threads=1, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, cwd=ROOT)
    done = lambda: finished_runs(root, "imp-round")
    t0 = time.time()
    while len(done()) < 4 and proc.poll() is None and time.time() - t0 < 120: time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    finished = len(done())
    s0 = dict(STATS)
    again = sweep([dict(seed=s, root=str(root)) for s in (0, 1)], imp_unit, "serial", threads=1, progress=False)
    total = sum(map(len, again))                                          # trained rounds of both chains
    assert total == 12 and 4 <= finished < total, (finished, total)
    assert run_counts(s0) == dict(loaded=finished, computed=total - finished)
    print(f"IMP sweep killed with {finished} of {total} rounds stored; the rerun loaded {finished} and trained {total - finished}")
    fresh = sweep([dict(seed=s, root=str(tmp_path/"fresh")) for s in (0, 1)], imp_unit, "serial", threads=1, progress=False)
    assert again == fresh


def test_second_process_waits_for_the_run(tmp_path):
    """A process that asks for a run another live process is computing waits, then loads it (computed once)."""
    root = tmp_path/"runs"
    c = units(root, n=1, sleep=3.0)[0]
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT/'tests')!r})
        import test_sweep as t
        t.train_unit({c!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    t0 = time.time()
    while not list(root.glob("unit-*.partial/lock")) and time.time() - t0 < 60: time.sleep(0.05)
    s0 = dict(STATS)
    key, _ = train_unit(c)
    assert proc.wait() == 0
    assert run_counts(s0) == dict(loaded=1, computed=0)
    assert runs.Run("unit", key, root/f"unit-{key}", True).info["pid"] == proc.pid


def test_lock_wait_gives_up(tmp_path):
    work = tmp_path/"k.partial"; work.mkdir()
    (work/"lock").write_text(json.dumps(runs.lock_record(1)))              # pid 1 is alive (and its start time is right)
    t0 = time.time()
    with pytest.raises(RuntimeError, match="being computed by process 1"):
        runs._lock(work, wait=0.5)
    assert 0.5 <= time.time() - t0 < 5


def test_unknown_executor_lists_the_known_ones():
    with pytest.raises(ValueError, match="executor='dask'.*'serial', 'pool', 'submitit', 'ray'"):
        sweep([1], print, "dask")


@pytest.mark.parametrize("executor,extra", [("submitit", "submitit"), ("ray", "ray")])
def test_missing_extra_names_it(executor, extra, monkeypatch):
    real = runs.importlib.import_module
    def no(name, *a, **k):
        if name == extra: raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *a, **k)
    monkeypatch.setattr(runs.importlib, "import_module", no)
    with pytest.raises(ImportError, match=rf"pip install -e '\.\[{extra}\]'"):
        sweep([1], print, executor)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_workers(bad):
    with pytest.raises(ValueError, match="workers="):
        sweep([1], print, "pool", workers=bad)


def test_unit_error_names_the_unit(tmp_path):
    def fails(c):
        if c == 2: raise KeyError("boom")
        return c
    with pytest.raises(KeyError, match="boom"):                           # serial: the error itself
        sweep([1, 2, 3], fails, progress=False)
    with pytest.raises(RuntimeError, match="the unit 2 failed.*KeyError"):
        sweep([1, 2, 3], fails, "pool", workers=2, progress=False)


def test_empty_sweep():
    assert sweep([], print, "pool") == []


@pytest.mark.slow
def test_ray_matches_serial(tmp_path):
    """A local Ray cluster computes the same runs as serial."""
    ray = pytest.importorskip("ray")
    try:
        ref = sweep(units(tmp_path/"serial", n=2), train_unit, "serial", threads=1, progress=False)
        out = sweep(units(tmp_path/"ray", n=2), train_unit, "ray", threads=1, progress=False, address="local")
    finally:
        ray.shutdown()
    assert out == ref
    same_runs(tmp_path/"serial", tmp_path/"ray", [k for k, _ in ref])
