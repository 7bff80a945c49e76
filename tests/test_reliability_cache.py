"""Reliability of the run cache (issue #24): a damaged finished run is detected, never loaded, and computed again;
runs from before manifests are checked by reading them; locks carry enough to be judged (a dead, reused, hung or
unreadable holder is taken over, a live one waited for); a full disk leaves no partial file, no `done`, no lock and
keeps the checkpoint; `sweep` refuses configs and fns it cannot use."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

import paper_repro.runs as runs
from paper_repro.runs import (CHECKPOINT, MANIFEST, STATS, CorruptRunWarning, Result, cached_run, lock_record,
                              run_counts, run_hash, sweep, verify_run)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(x=3)


def toy(extra=True):
    """A run function that counts its calls, writes its own files into its work folder (notes.txt, sub/extra.bin)
    and returns a history, tensors and info derived from the config."""
    calls = Counter()
    def fn(config, workdir):
        calls["n"] += 1
        if extra:
            (workdir/"notes.txt").write_text(f"notes of x={config['x']}\n")
            (workdir/"sub").mkdir(exist_ok=True); (workdir/"sub"/"extra.bin").write_bytes(bytes(range(200)))
        x = float(config["x"])
        return Result(pd.DataFrame(dict(epoch=[1, 2, 3], value=[x, 2 * x, 3 * x])),
                      tensors=dict(w=torch.full((50, 50), x), mask=torch.arange(10) < 5), info=dict(best=3 * x))
    return fn, calls


def assert_whole(run, x=3):
    "The run loads, and is the run of x."
    assert run.history["value"].tolist() == [x, 2 * x, 3 * x] and run.info == dict(best=3 * x)
    assert torch.equal(run.tensors["w"], torch.full((50, 50), float(x))) and run.config == dict(x=x)
    assert verify_run(run.path) is None


def recomputed(tmp_path, fn, calls, match):
    "Load the toy run again: assert it warns (naming the folder and `match`), calls fn again, and loads whole."
    folder = tmp_path/f"toy-{run_hash('toy', CONFIG)}"
    n, s0 = calls["n"], dict(STATS)
    with pytest.warns(CorruptRunWarning, match=rf"{folder.name}.* is damaged: .*{match}"):
        run = cached_run("toy", CONFIG, fn, root=tmp_path)
    assert calls["n"] == n + 1 and not run.cached
    assert run_counts(s0) == dict(loaded=0, computed=1)              # a recomputed damaged run is a miss
    assert_whole(run)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]        # nothing left aside (no .corrupt, no .partial)
    return run


def truncate(path, size=20):
    with open(path, "r+b") as f: f.truncate(size)


def other_config(folder):
    "The record of another run (x=4), of exactly the size of the toy run's: only a checksum or the hash tells them apart."
    rec = json.loads((folder/"config.json").read_text())
    text = json.dumps(dict(rec, config=dict(x=4), key=run_hash("toy", dict(x=4))), indent=2, default=str) + "\n"
    assert len(text) == len((folder/"config.json").read_text()) and text != (folder/"config.json").read_text()
    return text


DAMAGE = {
    "config.json garbage": (lambda d, o: (d/"config.json").write_text("{not json"), "config.json has"),
    "config.json of another run": (lambda d, o: (d/"config.json").write_text(o), "config.json has another checksum"),
    "history.parquet truncated": (lambda d, o: truncate(d/"history.parquet"), "history.parquet has 20 bytes"),
    "history.parquet deleted": (lambda d, o: (d/"history.parquet").unlink(), "history.parquet is missing"),
    "tensors.pt truncated": (lambda d, o: truncate(d/"tensors.pt"), "tensors.pt has 20 bytes"),
    "tensors.pt deleted": (lambda d, o: (d/"tensors.pt").unlink(), "tensors.pt is missing"),
    "tensors.pt bytes changed": (lambda d, o: (d/"tensors.pt").write_bytes((d/"tensors.pt").read_bytes()[:-30] + bytes(30)),
                                 "tensors.pt has another checksum"),
    "info.json garbage": (lambda d, o: (d/"info.json").write_text("[1, 2"), "info.json has"),
    "manifest.json garbage": (lambda d, o: (d/MANIFEST).write_text("{garbage"), "manifest.json is not the one `done` recorded"),
    "manifest.json deleted": (lambda d, o: (d/MANIFEST).unlink(), "manifest.json is missing"),
    "notes.txt (fn's own file) truncated": (lambda d, o: truncate(d/"notes.txt", 3), "notes.txt has 3 bytes"),
    "sub/extra.bin (fn's own file) deleted": (lambda d, o: (d/"sub"/"extra.bin").unlink(), "sub/extra.bin is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_run_is_recomputed(tmp_path, damage, monkeypatch):
    """Every file a run holds, damaged after it finished, is detected on the next load: warned about, the folder
    removed, fn called again, and the recomputed run loads. (The checksum memo is cleared: the damage is found by
    the next process, as it must be also when a rewrite keeps the size and falls in the same clock tick.)"""
    fn, calls = toy()
    run = cached_run("toy", CONFIG, fn, root=tmp_path)
    assert sorted(json.loads((run.path/MANIFEST).read_text())["files"]) == [
        "config.json", "history.parquet", "info.json", "notes.txt", "sub/extra.bin", "tensors.pt"]
    how, match = DAMAGE[damage]
    how(run.path, other_config(run.path))
    monkeypatch.setattr(runs, "_VERIFIED", {})
    recomputed(tmp_path, fn, calls, match)


def test_emptied_done_still_loads_by_the_manifest(tmp_path, monkeypatch):
    """`done` is a marker: emptied, it no longer records the manifest's checksum, and the run is checked by its
    manifest alone (whole here: loaded, no warning, fn not called)."""
    fn, calls = toy()
    run = cached_run("toy", CONFIG, fn, root=tmp_path)
    (run.path/"done").write_text("")
    monkeypatch.setattr(runs, "_VERIFIED", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cached_run("toy", CONFIG, fn, root=tmp_path)
    assert again.cached and calls["n"] == 1
    assert_whole(again)


def test_damage_found_without_clearing_the_memo(tmp_path):
    """In the same process, a file whose size changed is found by the per-load stat alone."""
    fn, calls = toy()
    run = cached_run("toy", CONFIG, fn, root=tmp_path)
    assert cached_run("toy", CONFIG, fn, root=tmp_path).cached
    truncate(run.path/"history.parquet")
    recomputed(tmp_path, fn, calls, "history.parquet has 20 bytes")


def test_checksums_are_taken_once_per_process(tmp_path, monkeypatch):
    """Loading a run many times hashes its files once (after a fresh start of the memo); a changed mtime hashes again."""
    fn, _ = toy()
    run = cached_run("toy", CONFIG, fn, root=tmp_path)
    monkeypatch.setattr(runs, "_VERIFIED", {})
    hashed, crc = Counter(), runs._crc32
    monkeypatch.setattr(runs, "_crc32", lambda p: (hashed.update([Path(p).name]), crc(p))[1])
    for _ in range(5): assert cached_run("toy", CONFIG, fn, root=tmp_path).cached
    assert hashed == Counter({"config.json": 1, "history.parquet": 1, "info.json": 1, "tensors.pt": 1, "notes.txt": 1,
                              "extra.bin": 1, MANIFEST: 1}), hashed
    os.utime(run.path/"info.json", (1e9, 1e9))                         # touched: checked again, still whole
    assert cached_run("toy", CONFIG, fn, root=tmp_path).cached and hashed["info.json"] == 2


def legacy(tmp_path, fn):
    "The toy run as the code before manifests wrote it: no manifest, a `done` holding a timestamp only."
    run = cached_run("toy", CONFIG, fn, root=tmp_path)
    (run.path/MANIFEST).unlink(); (run.path/"done").write_text("2026-01-01T00:00:00+00:00\n")
    runs._VERIFIED.clear()
    return run.path


def test_legacy_run_is_read_once_and_sealed(tmp_path, monkeypatch):
    """A finished run without a manifest (older code) is verified by reading every file; whole, it is loaded (fn not
    called, no warning) and gets its manifest, so the next process checks it by checksums."""
    fn, calls = toy()
    folder = legacy(tmp_path, fn)
    read = Counter()
    for name, reader in list(runs.READERS.items()):
        monkeypatch.setitem(runs.READERS, name, lambda p, r=reader: (read.update([p.name]), r(p))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = cached_run("toy", CONFIG, fn, root=tmp_path)
    assert calls["n"] == 1 and run.cached and (folder/MANIFEST).exists()
    assert read == Counter({"config.json": 1, "info.json": 1, "history.parquet": 1, "tensors.pt": 1})
    assert sorted(json.loads((folder/MANIFEST).read_text())["files"]) == [
        "config.json", "history.parquet", "info.json", "notes.txt", "sub/extra.bin", "tensors.pt"]
    runs._VERIFIED.clear()
    assert cached_run("toy", CONFIG, fn, root=tmp_path).cached and sum(read.values()) == 4   # by its manifest now
    assert_whole(run)


LEGACY_DAMAGE = {
    "history.parquet truncated": (lambda d, o: truncate(d/"history.parquet", 100), "history.parquet cannot be read"),
    "tensors.pt truncated": (lambda d, o: truncate(d/"tensors.pt", 100), "tensors.pt cannot be read"),
    "tensors.pt deleted": (lambda d, o: (d/"tensors.pt").unlink(), "tensors.pt is missing"),
    "info.json garbage": (lambda d, o: (d/"info.json").write_text("{1"), "info.json cannot be read"),
    "config.json garbage": (lambda d, o: (d/"config.json").write_text("\x00\x01"), "config.json cannot be read"),
    "config.json of another run": (lambda d, o: (d/"config.json").write_text(o), "config.json is the record of run toy-"),
}


@pytest.mark.parametrize("damage", list(LEGACY_DAMAGE))
def test_damaged_legacy_run_is_recomputed(tmp_path, damage):
    fn, calls = toy()
    folder = legacy(tmp_path, fn)
    how, match = LEGACY_DAMAGE[damage]
    how(folder, other_config(folder))
    recomputed(tmp_path, fn, calls, match)


def test_damaged_run_killed_before_its_rename_is_recomputed(tmp_path):
    """The other load path: `done` written, then killed before the rename. A damaged one is not finished but redone."""
    fn, calls = toy()
    run = cached_run("toy", CONFIG, fn, root=tmp_path)
    work = run.path.with_name(run.path.name + ".partial")
    os.replace(run.path, work); truncate(work/"tensors.pt")
    n = calls["n"]
    with pytest.warns(CorruptRunWarning, match=rf"{work.name} is damaged: tensors.pt has 20 bytes"):
        again = cached_run("toy", CONFIG, fn, root=tmp_path)
    assert calls["n"] == n + 1 and not again.cached and not work.exists()
    assert_whole(again)
    os.replace(again.path, work)                                        # whole: finished without computing
    assert cached_run("toy", CONFIG, fn, root=tmp_path).info == dict(best=9.0) and calls["n"] == n + 1


# ---------------------------------------------------------------- locks

def work_of(tmp_path):
    work = tmp_path/f"toy-{run_hash('toy', CONFIG)}.partial"; work.mkdir(parents=True, exist_ok=True)
    return work


@pytest.mark.parametrize("text", ["", "{garbage", f"{socket.gethostname()} 1", "[1, 2, 3]", '{"host": "h"}',
                                  json.dumps(dict(host=socket.gethostname(), pid=0))],
                         ids=["empty", "garbage", "old-format-pid-1", "json-list", "json-without-pid", "pid-0"])
def test_unreadable_lock_is_taken_over_at_once(tmp_path, text):
    fn, calls = toy()
    (work_of(tmp_path)/"lock").write_text(text)
    t0 = time.monotonic()
    run = cached_run("toy", CONFIG, fn, root=tmp_path, wait=0)
    assert calls["n"] == 1 and time.monotonic() - t0 < 2 and not (run.path/"lock").exists()
    assert_whole(run)


def test_reused_pid_is_taken_over(tmp_path):
    """pid 1 is alive, but the lock's start time is not pid 1's: the pid was reused, the holder is gone."""
    if runs.process_start(1) is None: pytest.skip("no /proc")
    fn, calls = toy()
    (work_of(tmp_path)/"lock").write_text(json.dumps(dict(lock_record(1), start=runs.process_start(1) + 12345)))
    assert not cached_run("toy", CONFIG, fn, root=tmp_path, wait=0).cached and calls["n"] == 1


@pytest.fixture
def child():
    "A live process of this host (a sleeping subprocess), killed afterwards."
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill(); p.wait()


def test_live_holder_is_waited_for(tmp_path, child, capsys, monkeypatch):
    """A lock naming a live process with its right start time is waited for; the wait says who and for how long;
    `wait=` gives up with the same description, naming pid and host."""
    fn, calls = toy()
    monkeypatch.setattr(runs, "LOCK_POLL", 0.05)
    (work_of(tmp_path)/"lock").write_text(json.dumps(dict(lock_record(child.pid), started=time.time() - 200)))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"being computed by process {child.pid} on host {socket.gethostname()} "
                                           r"\(for 3 min 2\d s, last heartbeat 0 s ago\)"):
        cached_run("toy", CONFIG, fn, root=tmp_path, wait=0.3)
    assert 0.3 <= time.monotonic() - t0 < 3 and calls["n"] == 0
    err = capsys.readouterr().err
    assert f"waiting for toy-{run_hash('toy', CONFIG)}.partial: process {child.pid} on host {socket.gethostname()} has computed it for 3 min" in err
    assert err.count("waiting for") == 1                                 # once at the start, then once a minute


def test_stale_heartbeat_is_taken_over(tmp_path, child):
    """A live process whose heartbeat stopped (it hangs) and another host's lock with an old heartbeat are taken over."""
    fn, calls = toy()
    lock = work_of(tmp_path)/"lock"
    for rec in (lock_record(child.pid), dict(lock_record(child.pid), host="another-host")):
        lock.write_text(json.dumps(rec))
        with pytest.raises(RuntimeError, match="being computed"):
            runs._lock(lock.parent, wait=0)                              # fresh: waited for
        old = time.time() - runs.STALE_AFTER - 5
        os.utime(lock, (old, old))
        held = runs._lock(lock.parent, wait=0)                           # stale: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        held.release()
    assert not cached_run("toy", CONFIG, fn, root=tmp_path).cached and calls["n"] == 1


def test_heartbeat_refreshes_the_lock_while_fn_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT", 0.05)
    seen = {}
    def fn(config, workdir):
        lock = workdir/"lock"
        seen["record"] = json.loads(lock.read_text())
        os.utime(lock, (1e9, 1e9)); time.sleep(0.4)
        seen["age"] = time.time() - lock.stat().st_mtime
        return pd.DataFrame(dict(v=[1.0]))
    run = cached_run("toy", CONFIG, fn, root=tmp_path)
    assert seen["age"] < 0.3, seen
    rec = seen["record"]
    assert (rec["host"], rec["pid"], rec["start"]) == (socket.gethostname(), os.getpid(), runs.process_start(os.getpid()))
    assert abs(rec["started"] - time.time()) < 60 and rec["heartbeat"] == 0.05 and not (run.path/"lock").exists()
    time.sleep(0.15)                                                     # released: the heartbeat thread has stopped
    assert not [t for t in __import__("threading").enumerate() if t.name.startswith("heartbeat of toy-")]


def test_failing_fn_leaves_no_lock(tmp_path):
    def fn(config, workdir): raise ValueError("diverged")
    with pytest.raises(ValueError, match="diverged"):
        cached_run("toy", CONFIG, fn, root=tmp_path)
    work = work_of(tmp_path)
    assert work.is_dir() and not (work/"lock").exists() and not list(work.glob("lock*"))


RACER = """
import sys, time, os
from pathlib import Path
import pandas as pd
import paper_repro.runs as runs
runs.LOCK_POLL = 0.05
root = Path(sys.argv[1])
def fn(config, workdir):
    with open(root.parent/"calls.log", "a") as f: f.write(f"{os.getpid()}\\n")
    time.sleep(0.5)
    return pd.DataFrame(dict(v=[1.0]))
(root.parent/f"ready-{os.getpid()}").touch()
while not (root.parent/"go").exists(): time.sleep(0.001)
print(runs.cached_run("race", dict(x=1), fn, root=root).key)
"""


def test_two_threads_racing_compute_once(tmp_path, monkeypatch):
    """Two threads of one process that ask for the same run at the same instant: the lock is created whole in one
    step, so one computes it and the other (which sees its own pid in the lock, held by a live thread) waits and loads."""
    monkeypatch.setattr(runs, "LOCK_POLL", 0.02)
    import threading
    calls, barrier, out = Counter(), threading.Barrier(2), {}
    def fn(config, workdir):
        calls["n"] += 1; time.sleep(0.3); return pd.DataFrame(dict(v=[1.0]))
    def racer(i):
        barrier.wait(); out[i] = cached_run("race", dict(x=1), fn, root=tmp_path)
    threads = [threading.Thread(target=racer, args=(i,)) for i in range(2)]
    for t in threads: t.start()
    for t in threads: t.join(30)
    assert calls["n"] == 1 and sorted(r.cached for r in out.values()) == [False, True] and out[0].path == out[1].path


@pytest.mark.slow   # ~10 s (two interpreters importing torch); test_sweep.py::test_second_process_waits_for_the_run covers it
def test_two_processes_racing_compute_once(tmp_path):
    """Two processes that ask for the same run at the same instant (both start when a file appears): one computes
    it, the other waits for it and loads it."""
    root = tmp_path/"runs"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(2)]
    t0 = time.time()
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() - t0 < 60 and all(p.poll() is None for p in procs): time.sleep(0.01)
    (tmp_path/"go").touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert outs[0][0] == outs[1][0] and len((tmp_path/"calls.log").read_text().split()) == 1
    assert sum("waiting for race-" in e for _, e in outs) == 1                # the other one said it waited


# ---------------------------------------------------------------- a full disk

def failing(error):
    "A writer (torch.save, DataFrame.to_parquet) that writes a few bytes to its file, then fails as a full disk does."
    def write(a, b, *args, **kwargs):
        Path(b if isinstance(a, pd.DataFrame) else b).write_bytes(b"x" * 7)
        raise error
    return write


@pytest.mark.parametrize("target,file,error", [
    ("torch.save", "tensors.pt", OSError(errno.ENOSPC, "No space left on device")),
    ("torch.save", "tensors.pt", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")),
    ("to_parquet", "history.parquet", OSError(errno.ENOSPC, "No space left on device")),
], ids=["torch-ENOSPC", "torch-unexpected-pos", "parquet-ENOSPC"])
def test_full_disk(tmp_path, monkeypatch, target, file, error):
    """A write that fails on a full disk: the OSError names the file and the run, the partial file is removed, no
    `done`, no lock, the checkpoint is kept; once the disk has room the rerun resumes, completes and loads."""
    fn, calls = toy()
    def resumable(config, workdir):
        assert calls["n"] == 0 or (workdir/CHECKPOINT).read_text() == "epoch 3", "the rerun finds the last checkpoint"
        (workdir/CHECKPOINT).write_text("epoch 3")
        return fn(config, workdir)
    with monkeypatch.context() as m:
        if target == "torch.save": m.setattr(torch, "save", failing(error))        # torch.save(obj, path)
        else: m.setattr(pd.DataFrame, "to_parquet", failing(error))                 # df.to_parquet(path)
        m.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))   # the disk is full
        work = work_of(tmp_path)
        with pytest.raises(OSError, match=rf"no space left writing {file} of run .*{work.name}") as e:
            cached_run("toy", CONFIG, resumable, root=tmp_path)
    assert e.value.errno == errno.ENOSPC
    assert not (work/file).exists() and not (work/"done").exists() and not (work/MANIFEST).exists()
    assert (work/CHECKPOINT).read_text() == "epoch 3" and not list(work.glob("lock*"))
    assert not (tmp_path/work.name.removesuffix(".partial")).exists()
    run = cached_run("toy", CONFIG, resumable, root=tmp_path)        # the disk is freed
    assert calls["n"] == 2 and not run.cached and not (run.path/CHECKPOINT).exists()
    assert_whole(run)
    assert cached_run("toy", CONFIG, resumable, root=tmp_path).cached


def test_failed_manifest_or_done_write_keeps_the_checkpoint(tmp_path, monkeypatch):
    """The last two writes fail too (through `writing`): still no `done`, and the checkpoint is kept."""
    fn, calls = toy()
    def resumable(config, workdir):
        (workdir/CHECKPOINT).write_text("epoch 3"); return fn(config, workdir)
    real = Path.write_text
    def full(self, *a, **k):
        if self.name == "done": self.write_bytes(b"20"); raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", full)
        with pytest.raises(OSError, match="no space left writing done of run"):
            cached_run("toy", CONFIG, resumable, root=tmp_path)
    work = work_of(tmp_path)
    assert not (work/"done").exists() and (work/CHECKPOINT).exists() and not (work/"lock").exists()
    assert_whole(cached_run("toy", CONFIG, resumable, root=tmp_path))


# ---------------------------------------------------------------- sweep's input

@pytest.mark.parametrize("configs,match", [
    (None, r"configs=None: give a list \(or any iterable\) of configurations"),
    (5, "configs=5: give a list"),
    ("abc", "configs='abc': give a list"),
    (dict(seed=0), r"configs=\{'seed': 0\}: .*put it in a list"),
])
def test_sweep_bad_configs(configs, match):
    with pytest.raises(TypeError, match=match):
        sweep(configs, print, progress=False)


@pytest.mark.parametrize("fn", [5, "train", None])
def test_sweep_bad_fn(fn):
    with pytest.raises(TypeError, match=rf"fn={fn!r}: give a function config -> result"):
        sweep([1, 2], fn, progress=False)


def test_sweep_takes_any_iterable():
    assert sweep((c * 2 for c in range(3)), lambda c: c + 1, progress=False) == [1, 3, 5]
