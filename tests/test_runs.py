"""paper_repro.runs: canonical configs and hashes, hits and misses, killed runs, locks, what a run stores."""
import json
import os
import socket
import sys
import time
import types
from collections import Counter

import pandas as pd
import pytest
import torch

import paper_repro.runs as runs
from paper_repro.runs import CHECKPOINT, STATS, Result, cached_run, canonical, jsonable, run_hash, runs_root
from paper_repro.recipes import Recipe


def counting(result=None):
    "A run function that counts its calls and returns a small history, tensors and info derived from the config."
    calls = Counter()
    def fn(config, workdir):
        calls["n"] += 1
        assert workdir.name.endswith(".partial") and workdir.is_dir()
        x = float(config["x"])
        return result if result is not None else Result(
            history=pd.DataFrame(dict(epoch=[1, 2], metric="acc", value=[x, 2 * x])),
            tensors=dict(mask=torch.arange(4) < 2, nested=dict(w=torch.full((2, 2), x))), info=dict(best=2 * x))
    return fn, calls


@pytest.mark.parametrize("a,b", [
    (dict(x=1), dict(x=1.0)),                                   # numbers are floats
    (dict(d=(0.5, 0.1)), dict(d=[0.5, 0.1])),                   # tuples are lists
    (dict(a=1, b=dict(c=2, d=3)), dict(b=dict(d=3, c=2), a=1)), # key order does not matter
    (dict(r=Recipe(lr=0.05)), dict(r=Recipe(lr=0.05).to_dict())),  # a dataclass is its fields
    (dict(x=1e-5), dict(x=0.00001)),
])
def test_canonical_equal(a, b):
    """Configs that mean the same have one canonical text and one hash."""
    assert canonical(a) == canonical(b) and run_hash("k", a) == run_hash("k", b)


@pytest.mark.parametrize("a,b", [
    (dict(x=1), dict(x=2)), (dict(x=True), dict(x=1)), (dict(x=None), dict(x=0)), (dict(x="1"), dict(x=1)),
    (dict(r=Recipe(lr=0.05)), dict(r=Recipe(lr=0.1))), (dict(x=[1, 2]), dict(x=[2, 1])), (dict(x=1), dict(x=1, y=0)),
])
def test_canonical_different(a, b):
    """Configs that differ in any value, type (bool/None/str vs number), order of a list or key set differ."""
    assert canonical(a) != canonical(b) and run_hash("k", a) != run_hash("k", b)


def test_hash_depends_on_kind_and_both_versions(monkeypatch):
    cfg = dict(x=1)
    h = run_hash("k", cfg)
    assert len(h) == 16 and int(h, 16) >= 0
    assert h != run_hash("other", cfg) and h != run_hash("k", cfg, version=1)
    monkeypatch.setattr(runs, "ENGINE_VERSION", runs.ENGINE_VERSION + 1)
    assert h != run_hash("k", cfg)


@pytest.mark.parametrize("value,where", [
    (dict(f=len), "config['f']"), (dict(w=[0, torch.ones(1)]), "config['w'][1]"), ({1: 2}, "keys must be strings"),
    (dict(m=torch.nn.Linear(1, 1)), "config['m']"),
])
def test_jsonable_refuses_what_has_no_json_form(value, where):
    with pytest.raises(TypeError, match=__import__("re").escape(where)):
        jsonable(value)


def test_same_config_loads_without_calling(tmp_path):
    """The second call is a hit: fn is not called, and the run reads back exactly what the first stored."""
    fn, calls = counting()
    before = Counter(STATS)
    a = cached_run("toy", dict(x=3), fn, root=tmp_path)
    b = cached_run("toy", dict(x=3.0), fn, root=tmp_path)       # the same run written differently
    assert calls["n"] == 1 and (a.cached, b.cached) == (False, True) and a.path == b.path
    assert (STATS["misses"] - before["misses"], STATS["hits"] - before["hits"]) == (1, 1)
    pd.testing.assert_frame_equal(b.history, pd.DataFrame(dict(epoch=[1, 2], metric="acc", value=[3.0, 6.0])))
    assert torch.equal(b.tensors["mask"], torch.tensor([True, True, False, False]))
    assert torch.equal(b.tensors["nested"]["w"], torch.full((2, 2), 3.0)) and b.info == dict(best=6.0)
    assert b.config == dict(x=3) and b.record["kind"] == "toy" and b.record["key"] == b.key
    assert sorted(p.name for p in b.path.iterdir()) == ["config.json", "done", "history.parquet", "info.json", "manifest.json", "tensors.pt"]
    torch.load(b.path / "tensors.pt", weights_only=True)        # safe loading works


def test_changed_config_trains_anew(tmp_path):
    fn, calls = counting()
    a, b = cached_run("toy", dict(x=1), fn, root=tmp_path), cached_run("toy", dict(x=2), fn, root=tmp_path)
    assert calls["n"] == 2 and a.key != b.key and b.info == dict(best=4.0)
    c = cached_run("toy", dict(x=1), fn, version=7, root=tmp_path)   # another algorithm version
    assert calls["n"] == 3 and c.key != a.key


def test_module_cache_version_is_used(tmp_path, monkeypatch):
    """Without `version=`, the CACHE_VERSION of the module defining fn is part of the key."""
    mod = types.ModuleType("fake_algorithm"); mod.CACHE_VERSION = 5
    monkeypatch.setitem(sys.modules, "fake_algorithm", mod)
    fn, calls = counting()
    fn.__module__ = "fake_algorithm"
    run = cached_run("toy", dict(x=1), fn, root=tmp_path)
    assert run.key == run_hash("toy", dict(x=1), 5) != run_hash("toy", dict(x=1), 0) and run.record["version"] == 5


def test_killed_run_is_recomputed(tmp_path):
    """An exception in fn leaves only the .partial folder (with what fn wrote); the next call computes it there."""
    seen = []
    def fn(config, workdir):
        seen.append(sorted(p.name for p in workdir.iterdir()))
        if len(seen) == 1:
            (workdir / CHECKPOINT).write_text("epoch 2"); (workdir / "notes.txt").write_text("kept")
            raise KeyboardInterrupt
        assert (workdir / CHECKPOINT).read_text() == "epoch 2"    # a resumable run finds its checkpoint
        return Result(pd.DataFrame(dict(v=[1.0])))
    with pytest.raises(KeyboardInterrupt):
        cached_run("toy", dict(x=1), fn, root=tmp_path)
    key = run_hash("toy", dict(x=1))
    assert not (tmp_path / f"toy-{key}").exists() and (tmp_path / f"toy-{key}.partial").is_dir()
    run = cached_run("toy", dict(x=1), fn, root=tmp_path)
    assert len(seen) == 2 and not run.cached and (run.path / "done").exists()
    assert not (run.path / CHECKPOINT).exists() and (run.path / "notes.txt").read_text() == "kept"
    assert not (tmp_path / f"toy-{key}.partial").exists() and not (run.path / "lock").exists()


def test_killed_after_done_is_finished_without_recomputing(tmp_path):
    fn, calls = counting()
    run = cached_run("toy", dict(x=1), fn, root=tmp_path)
    os.replace(run.path, run.path.with_name(run.path.name + ".partial"))   # as if killed before the rename
    again = cached_run("toy", dict(x=1), fn, root=tmp_path)
    assert calls["n"] == 1 and (again.path / "done").exists() and again.info == dict(best=2.0)


def test_folder_without_done_is_not_a_run(tmp_path):
    fn, calls = counting()
    stale = tmp_path / f"toy-{run_hash('toy', dict(x=1))}"
    stale.mkdir(parents=True); (stale / "history.parquet").write_text("garbage")
    run = cached_run("toy", dict(x=1), fn, root=tmp_path)
    assert calls["n"] == 1 and run.path == stale and run.history["value"].tolist() == [1.0, 2.0]


def test_lock(tmp_path):
    """A lock names its holder: a live one (pid 1 with its start time; another host's with a fresh heartbeat) is
    waited for, a stale one (heartbeat too old, dead pid) is taken over; the lock taken is this process's, in JSON."""
    work = tmp_path / "k.partial"; work.mkdir()
    (work / "lock").write_text(json.dumps(runs.lock_record(1)))           # pid 1 is alive
    with pytest.raises(RuntimeError, match="being computed by process 1 on host"):
        runs._lock(work, wait=0)
    (work / "lock").write_text(json.dumps(dict(runs.lock_record(123), host="some-other-host")))   # another host, heartbeat now
    with pytest.raises(RuntimeError, match="some-other-host"):
        runs._lock(work, wait=0)
    old = time.time() - runs.STALE_AFTER - 10                           # ... and long ago: stale, taken over
    os.utime(work / "lock", (old, old))
    held = runs._lock(work, wait=0)
    assert json.loads((work / "lock").read_text())["pid"] == os.getpid() and json.loads((work / "lock").read_text())["host"] == socket.gethostname()
    held.release(); assert not (work / "lock").exists()
    (work / "lock").write_text(json.dumps(runs.lock_record(999999999)))   # a dead process's lock is taken over
    held = runs._lock(work)
    assert json.loads((work / "lock").read_text())["pid"] == os.getpid()
    held.release()


def test_default_root_is_outputs_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    fn, _ = counting()
    assert runs_root() == tmp_path / "runs"
    assert cached_run("toy", dict(x=1), fn).path.parent == tmp_path / "runs"


@pytest.mark.parametrize("kind", ["Toy", "a b", "../x", "", "-x", 3])
def test_bad_kind(kind, tmp_path):
    with pytest.raises(ValueError, match="kind="):
        cached_run(kind, dict(x=1), counting()[0], root=tmp_path)


def test_bad_config_and_result(tmp_path):
    with pytest.raises(TypeError, match="mapping"):
        cached_run("toy", [1, 2], counting()[0], root=tmp_path)
    with pytest.raises(TypeError, match="returned int"):
        cached_run("toy", dict(x=1), lambda c, w: 3, root=tmp_path)
    assert not any(p.name.endswith("done") for p in tmp_path.rglob("*"))
    df = cached_run("toy", dict(x=2), lambda c, w: pd.DataFrame(dict(v=[c["x"]])), root=tmp_path)  # a bare history
    assert df.history["v"].tolist() == [2] and df.tensors == {} and df.info == {}
