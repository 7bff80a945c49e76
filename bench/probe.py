"""Bad inputs and faults, tried as a new user would: every one must end in a clear error (naming the parameter or the
file, the value and what is allowed) or be handled (a corrupt run recomputed with a warning, a dead lock taken over).
The [reliability] issue's 27 named cases come first, then more of our own.

    python bench/probe.py               # the table, then the totals line
    python bench/probe.py --markdown    # the table as markdown (for a closing note)

Outcomes: `clear error` and `handled` pass; `silent` (accepted without a word, or a wrong result), `poor error` (the
message lacks what it must say) and `crash` (an unrelated exception) fail. The script exits 1 if any case fails.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)

from paper_repro import runs                                           # noqa: E402
from paper_repro.core import save_json                                # noqa: E402
from paper_repro.data import DataSplit                                # noqa: E402
from paper_repro.masks import Mask, apply_mask, magnitude, masked_layers  # noqa: E402
from paper_repro.models import get_model                              # noqa: E402
from paper_repro.recipes import Recipe                                # noqa: E402
from paper_repro.train import fit                                     # noqa: E402

CASES: list[tuple[str, str, callable]] = []   # (area, what is tried, probe) in the order of the table


def case(area: str, what: str):
    def add(fn): CASES.append((area, what, fn)); return fn
    return add


class Outcome(Exception):
    "A probe's verdict: `kind` ('clear error', 'handled', 'silent', 'poor error'), and what was seen."
    def __init__(self, kind: str, seen: str): super().__init__(seen); self.kind, self.seen = kind, seen


def expect(fn, exc, *words) -> str:
    "`fn` must raise `exc` with every one of `words` in its message: a clear error. Otherwise silent or poor."
    try: out = fn()
    except exc as e:
        msg = f"{type(e).__name__}: {e}"
        missing = [w for w in words if w not in str(e)]
        if missing: raise Outcome("poor error", f"{msg[:160]} (lacks {missing})")
        raise Outcome("clear error", msg[:200])
    except Exception as e:
        names = "/".join(x.__name__ for x in (exc if isinstance(exc, tuple) else (exc,)))
        raise Outcome("poor error", f"{type(e).__name__} (expected {names}): {str(e)[:160]}")
    raise Outcome("silent", f"accepted, returned {out!r:.120}")


def handled(ok: bool, seen: str, bad: str):
    raise Outcome("handled" if ok else "silent", seen if ok else bad)


# ---------------------------------------------------------------------------------------------------------------- data
def tiny(n=64, classes=4, size=8, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    def split(name, m):
        return DataSplit(x=torch.randint(0, 256, (m, 1, size, size), generator=g, dtype=torch.uint8),
                         y=torch.randint(0, classes, (m,), generator=g), name="tiny", split=name,
                         classes=tuple(str(i) for i in range(classes)), mean=(0.5,), std=(0.25,), source="probe",
                         indices=torch.arange(m))
    return {"train": split("train", n), "test": split("test", n // 2)}


def net(classes=4, size=8, seed=0):
    return get_model("lenet-300-100", in_channels=1, input_size=size, num_classes=classes, seed=seed)


QUICK = Recipe(optimizer="sgd", lr=0.05, epochs=1, batch_size=16)


def train(model, data=None, recipe=QUICK, **kw):
    return fit(model, data or tiny(), recipe, device="cpu", progress=False, **kw)


# ----------------------------------------------------------------------------------------------------- the run cache
CALLS = []


def _store(config, work):
    CALLS.append(config["i"])
    torch.save({"w": torch.arange(4.0)}, work/"checkpoint.pt")
    return runs.Result(history=pd.DataFrame(dict(epoch=[1, 2], value=[0.5, 0.25])), tensors={"w": torch.arange(4.0)},
                       info=dict(acc=0.75))


@contextlib.contextmanager
def cache():
    with tempfile.TemporaryDirectory() as d:
        CALLS.clear(); yield Path(d)


def _loads(run) -> bool:
    return (list(run.history.value) == [0.5, 0.25] and torch.equal(run.tensors["w"], torch.arange(4.0))
            and run.info["acc"] == 0.75)


def corrupt(change, i=0):
    "Store run i, damage it by `change(folder)`, load it again: it must be recomputed, with a warning naming its folder."
    with cache() as root:
        first = runs.cached_run("probe", dict(i=i), _store, root=root)
        change(first.path)
        before = len(CALLS)                                  # `change` may compute other runs
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try: again = runs.cached_run("probe", dict(i=i), _store, root=root); ok = _loads(again)
            except Exception as e: raise Outcome("crash", f"{type(e).__name__}: {str(e)[:160]}")
        named = [str(x.message) for x in w if first.path.name in str(x.message)]
        handled(len(CALLS) == before + 1 and not again.cached and ok and bool(named),
                f"recomputed, warned: {named[0][:150] if named else ''}",
                f"served: cached={again.cached}, computed {len(CALLS)} times, warnings {[str(x.message)[:80] for x in w]}")


def _truncate(path: Path, keep: int = 10):
    data = path.read_bytes(); path.write_bytes(data[:keep])


@case("cache", "truncated history.parquet of a finished run")
def _(): corrupt(lambda p: _truncate(p/"history.parquet"))

@case("cache", "tensors.pt deleted")
def _(): corrupt(lambda p: (p/"tensors.pt").unlink())

@case("cache", "tensors.pt truncated")
def _(): corrupt(lambda p: _truncate(p/"tensors.pt", 100))

@case("cache", "garbage in info.json")
def _(): corrupt(lambda p: (p/"info.json").write_text("{garbage"))

@case("cache", "garbage in config.json")
def _(): corrupt(lambda p: (p/"config.json").write_text("not json"))

@case("cache", "config.json of another run copied in (does not match the folder's hash)")
def _():
    def swap(p):
        other = runs.cached_run("probe", dict(i=99), _store, root=p.parent)
        shutil.copy(other.path/"config.json", p/"config.json")
    corrupt(swap)


# ---------------------------------------------------------------------------------------------------------- locks
def locked(text: str, limit: float = 20.0, age: float = 0.0):
    "A run whose work folder holds a lock with `text`, last written `age` s ago: it must be taken over promptly, not waited for."
    with cache() as root:
        key = runs.run_hash("probe", dict(i=0), 0)
        work = root/f"probe-{key}.partial"; work.mkdir(parents=True)
        (work/"lock").write_text(text)
        then = time.time() - age; os.utime(work/"lock", (then, then)); os.utime(work, (then, then))
        t0 = time.monotonic()
        try: runs.cached_run("probe", dict(i=0), _store, version=0, root=root, wait=limit)
        except Exception as e: raise Outcome("silent", f"blocked: {type(e).__name__}: {str(e)[:150]}")
        dt = time.monotonic() - t0
        handled(len(CALLS) == 1 and dt < 10, f"taken over in {dt:.2f} s", f"took {dt:.1f} s")


@case("locks", "an empty lock file")
def _(): locked("")

@case("locks", "a garbage lock file")
def _(): locked("\x00\x01 not a lock")

@case("locks", "a lock naming a live unrelated pid (pid 1 on this host)")
def _(): locked(f"{socket.gethostname()} 1")


# ----------------------------------------------------------------------------------------------------- NaN, divergence
def nan_model():
    m = net()
    with torch.no_grad(): next(iter(m.parameters())).view(-1)[5] = float("nan")
    return m


@case("nan", "one NaN weight, then magnitude pruning")
def _(): expect(lambda: magnitude(Mask.ones(nan_model()), nan_model(), density=0.5).density, ValueError, "non-finite")

@case("nan", "fit with lr=1e6")
def _():
    expect(lambda: train(net(), recipe=Recipe(optimizer="sgd", lr=1e6, epochs=2, batch_size=16)), FloatingPointError,
           "epoch", "lr=1e+06")

@case("nan", "imp on a diverged run")
def _():
    from paper_repro.imp import imp
    arch = dict(name="lenet-300-100", in_channels=1, input_size=8, num_classes=4, seed=0)
    expect(lambda: imp(arch, tiny(), 0.5, Recipe(optimizer="sgd", lr=1e6, epochs=1, batch_size=16), cache=False, progress=False),
           FloatingPointError, "lr=1e+06")

@case("nan", "error_barrier with a NaN on the path")
def _():
    from paper_repro.connectivity import error_barrier
    path = pd.DataFrame(dict(alpha=[0, 0.5, 1], error=[0.1, float("nan"), 0.1]))
    expect(lambda: error_barrier(path), ValueError, "non-finite")

@case("nan", "correlation_indicator on NaN weights")
def _():
    from paper_repro.sanity import correlation_indicator
    a = {"w": torch.tensor([1.0, float("nan"), 3.0, 4.0])}
    expect(lambda: correlation_indicator(a, {"w": torch.arange(4.0)}, 0.5), ValueError, "non-finite")


# ------------------------------------------------------------------------------------------------------------ masks
@case("masks", "apply_mask with values that are not 0/1")
def _():
    m = net(); w0 = m.fc1.weight.detach().clone() if hasattr(m, "fc1") else None
    name = next(iter(Mask.ones(m)))
    expect(lambda: apply_mask(m, {name: torch.full_like(Mask.ones(m)[name], 0.5, dtype=torch.float)}), ValueError, "0", "1")

@case("masks", "a masked layer's mask buffer edited in place")
def _():
    m = net(); apply_mask(m, Mask.ones(m))
    name, layer = next(iter(masked_layers(m).items()))
    layer.mask.zero_()                                   # prune the whole first layer by hand
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad(): out = m(x)
    ref = net(); apply_mask(ref, {**{n: t for n, t in Mask.ones(ref).items()}, name: torch.zeros_like(Mask.ones(ref)[name])})
    with torch.no_grad(): want = ref(x)
    handled(torch.allclose(out, want) and float(layer.weight.abs().sum()) == 0.0, "the forward pass follows the edited buffer",
            "pruned weights still active in the forward pass")


# -------------------------------------------------------------------------------------------------------- parameters
def cli(*args, timeout=60) -> tuple[int, str, float]:
    t0 = time.monotonic()
    p = subprocess.run([str(Path(sys.executable).parent/"paper-repro"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else "", time.monotonic() - t0


def cli_case(*args, words=()):
    rc, last, dt = cli(*args)
    if rc != 2: raise Outcome("silent" if rc == 0 else "poor error", f"exit {rc} after {dt:.1f} s: {last[:150]}")
    missing = [w for w in words if w not in last]
    raise Outcome("poor error" if missing else "clear error", f"exit 2 in {dt:.1f} s: {last[:170]}")


def cli_cases(rows):
    "One case per (console-script arguments, words the message must hold): it must exit 2 before any kernel starts."
    for args, words in rows:
        case("parameters", "paper-repro " + " ".join(args))(lambda args=args, words=words: cli_case(*args, words=words))


cli_cases([
    (("run", "fig3", "-p", "lam", "-1"), ("lam=-1",)),
    (("run", "fig3", "-p", "density", "0"), ("density=0",)),
    (("run", "fig3", "-p", "batch_size", "0"), ("batch_size",)),
    (("run", "fig3", "-p", "network", "nosuch"), ("network",)),
])


# ------------------------------------------------------------------------------------------------------ poor errors
@case("errors", "fit with a network whose input size does not match the data")
def _(): expect(lambda: train(net(size=28)), ValueError, "8")

@case("errors", "num_classes smaller than the data's labels")
def _(): expect(lambda: train(net(classes=2), tiny(classes=4)), ValueError, "num_classes", "4")

@case("errors", "a checkpoint path in a missing folder")
def _():
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        expect(lambda: train(net(), checkpoint=Path(d)/"nosuch"/"ck.pt"), (ValueError, FileNotFoundError), "nosuch")

@case("errors", "Mask([...])")
def _(): expect(lambda: Mask([torch.ones(3)]), TypeError, "Mask")

@case("errors", "sigmoid_schedule(gamma=1e-300)")
def _():
    from paper_repro.asni import sigmoid_schedule
    try: v = sigmoid_schedule(1, 10, 50.0, 0.5, 1e-300)
    except ValueError as e: raise Outcome("clear error", f"ValueError: {str(e)[:160]}")
    except Exception as e: raise Outcome("poor error", f"{type(e).__name__}: {str(e)[:160]}")
    handled(math.isfinite(v) and 0 <= v <= 50, f"computed without overflow: {v}", f"returned {v}")

@case("errors", "fit(callbacks=[5])")
def _(): expect(lambda: train(net(), callbacks=[5]), TypeError, "callbacks[0]=5")

@case("errors", "sweep(None, fn)")
def _(): expect(lambda: runs.sweep(None, print, progress=False), TypeError, "configs=None")

@case("errors", "sweep with a function that is not callable")
def _(): expect(lambda: runs.sweep([1, 2], 5, progress=False), TypeError, "fn=5")


# -------------------------------------------------------------------------------------------------------- disk full
def _full_disk_save(obj, f, *a, **k):
    Path(f).write_bytes(b"PK\x03\x04 partial")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


@case("disk full", "the disk fills up while a run writes tensors.pt")
def _():
    with cache() as root, mock.patch("torch.save", _full_disk_save), \
         mock.patch("shutil.disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 0)):
        try: runs.cached_run("probe", dict(i=0), lambda c, w: runs.Result(tensors={"w": torch.ones(2)}), root=root)
        except OSError as e:
            left = [p.name for p in root.rglob("tensors.pt")]
            ok = "no space left writing tensors.pt" in str(e) and not left
            raise Outcome("clear error" if ok else "poor error", f"OSError: {str(e)[:150]}" + (f"; left {left}" if left else ""))
        except Exception as e: raise Outcome("poor error", f"{type(e).__name__}: {str(e)[:160]}")
        raise Outcome("silent", "no error")


# ------------------------------------------------------------------------------------------------------------ AdamW
@case("optimizers", "AdamW under a mask: pruned weights and their state stay 0")
def _():
    from paper_repro.masks import random_mask
    m = net(); mask = random_mask(m, 0.3, seed=1)
    try: train(m, recipe=Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.01, epochs=1, batch_size=16), mask=mask)
    except Exception as e: raise Outcome("poor error", f"{type(e).__name__}: {str(e)[:160]}")
    w = {n: l.weight for n, l in masked_layers(m).items()}
    handled(all(bool((w[n][~mask[n]] == 0).all()) for n in mask), "trained; every pruned weight is exactly 0", "a pruned weight moved")


# ------------------------------------------------------------------------------------------------------ our own
@case("cache", "manifest.json garbage")
def _(): corrupt(lambda p: (p/"manifest.json").write_text("[]"))

@case("cache", "a byte of tensors.pt flipped (same size)")
def _():
    def flip(p):
        b = bytearray((p/"tensors.pt").read_bytes()); b[-30] ^= 0xFF; (p/"tensors.pt").write_bytes(bytes(b))
    corrupt(flip)

@case("cache", "history.parquet replaced by another run's (valid file, wrong content)")
def _():
    def swap(p):
        other = runs.cached_run("probe", dict(i=7), lambda c, w: pd.DataFrame(dict(epoch=[1], value=[9.0])), root=p.parent)
        shutil.copy(other.path/"history.parquet", p/"history.parquet")
    corrupt(swap)

@case("locks", "a lock in the old 'host pid' format naming this process's parent")
def _(): locked(f"{socket.gethostname()} {os.getppid()}")

@case("locks", "a lock whose holder's heartbeat stopped 2 hours ago (another host)")
def _(): locked(json.dumps(dict(host="elsewhere", pid=4242, start=None, started=time.time() - 7300)), age=7200)

@case("locks", "a live holder (a sleeping child process on this host): waited for, and the wait names it")
def _():
    with cache() as root:
        key = runs.run_hash("probe", dict(i=0), 0)
        code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from paper_repro import runs; from pathlib import Path; "
                "runs.cached_run('probe', dict(i=0), lambda c, w: time.sleep(60), version=0, root=Path(sys.argv[2]))")
        child = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(root)], stderr=subprocess.DEVNULL)
        try:
            lock = root/f"probe-{key}.partial"/"lock"
            for _ in range(200):
                if lock.exists() and lock.stat().st_size: break
                time.sleep(0.1)
            expect(lambda: runs.cached_run("probe", dict(i=0), _store, version=0, root=root, wait=1.0), RuntimeError, str(child.pid))
        finally: child.kill(); child.wait()

@case("nan", "an extra loss term that returns NaN")
def _(): expect(lambda: train(net(), extra_loss=lambda m: torch.tensor(float("nan"))), FloatingPointError, "epoch")

@case("nan", "angular_distance of NaN weights")
def _():
    from paper_repro.connectivity import angular_distance
    expect(lambda: angular_distance({"w": torch.tensor([1.0, float("nan")])}, {"w": torch.ones(2)}), ValueError, "non-finite")

@case("masks", "Mask with a NaN entry")
def _(): expect(lambda: Mask({"w": torch.tensor([1.0, float("nan")])}), ValueError, "w")

@case("masks", "Mask with values 0.5 and 2")
def _(): expect(lambda: Mask({"w": torch.tensor([0.5, 2.0])}), ValueError, "0.5")

@case("masks", "a mask buffer replaced by a new tensor")
def _():
    m = net(); apply_mask(m, Mask.ones(m))
    name, layer = next(iter(masked_layers(m).items()))
    layer.mask = torch.zeros_like(layer.mask)
    with torch.no_grad(): out = m(torch.randn(2, 1, 8, 8))
    handled(float(layer.weight.abs().sum()) == 0.0, "the new buffer's pruned weights are zeroed before the forward pass",
            "pruned weights still active")

@case("parameters", "make repro NB=fig3 ARGS='-p lam -1' (before any kernel)")
def _():
    t0 = time.monotonic()
    p = subprocess.run(["make", "-s", "repro", "NB=fig3", "ARGS=-p lam -1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    dt, out = time.monotonic() - t0, (p.stdout + p.stderr)
    started = "papermill nbs/" in out and "Executing" in out
    if p.returncode == 0 or started: raise Outcome("silent", f"exit {p.returncode} after {dt:.0f} s; a kernel started: {started}")
    raise Outcome("clear error" if "lam=-1" in out else "poor error", f"exit {p.returncode} in {dt:.1f} s: " + out.strip().splitlines()[-1][:150])

cli_cases([
    (("run", "rti_fig2", "-p", "instability_rounds", "99"), ("instability_rounds",)),
    (("run", "asni_fig2", "-p", "seeds", "-1"), ("seed",)),
    (("run", "fig3", "-p", "preset", "huge"), ("preset",)),
    (("run", "fig1", "-p", "network", "nosuch"), ("nosuch",)),
    (("run", "rti_fig8", "-p", "batch_size", "0"), ("batch_size=0",)),
    (("check", "rti_fig8", "-p", "rounds", "1"), ("rounds=1",)),
])

@case("errors", "an unknown optimizer in a recipe")
def _(): expect(lambda: Recipe(optimizer="lion"), ValueError, "lion", "adamw")

@case("errors", "magnitude pruning to density 1.5")
def _(): m = net(); expect(lambda: magnitude(Mask.ones(m), m, density=1.5), ValueError, "density=1.5")

@case("errors", "sweep with workers=0")
def _(): expect(lambda: runs.sweep([1], print, workers=0, progress=False), ValueError, "workers=0")

@case("disk full", "the disk fills up while fit writes its checkpoint: the last good one is kept")
def _():
    real, saved = torch.save, []
    def second_fails(obj, f, *a, **k):                   # epoch 1's checkpoint is written; the disk is full at epoch 2
        if saved: return _full_disk_save(obj, f)
        real(obj, f, *a, **k); saved.append(Path(f).read_bytes())
    with tempfile.TemporaryDirectory() as d:
        ck = Path(d)/"ck.pt"
        with mock.patch("torch.save", second_fails), mock.patch("shutil.disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 0)):
            try: train(net(), recipe=Recipe(optimizer="sgd", lr=0.05, epochs=2, batch_size=16), checkpoint=ck)
            except OSError as e:
                kept = ck.exists() and ck.read_bytes() == saved[0] and not list(Path(d).glob("*.tmp"))
                raise Outcome("clear error" if kept and "no space left" in str(e) else "poor error", f"OSError: {str(e)[:120]}; last good kept: {kept}")
            except Exception as e: raise Outcome("poor error", f"{type(e).__name__}: {str(e)[:160]}")
            raise Outcome("silent", "no error")


def main(markdown: bool = False) -> int:
    rows = []
    warnings.simplefilter("ignore")
    for area, what, fn in CASES:
        t0 = time.monotonic()
        try: fn(); kind, seen = "crash", "the probe returned without a verdict"
        except Outcome as o: kind, seen = o.kind, o.seen
        except Exception as e: kind, seen = "crash", f"{type(e).__name__}: {str(e)[:160]}"
        rows.append(dict(n=len(rows) + 1, area=area, tried=what, outcome=kind, seen=seen.replace("\n", " "), s=round(time.monotonic() - t0, 1)))
        if not markdown: print(f"{len(rows):2d} {area:11s} {kind:12s} {what[:60]:60s} | {seen[:110]}", flush=True)
    t = pd.DataFrame(rows)
    if markdown:
        print("| # | area | tried | outcome | seen |\n|---|---|---|---|---|")
        for r in rows: print(f"| {r['n']} | {r['area']} | {r['tried']} | {r['outcome']} | {r['seen'].replace('|', '/')[:160]} |")
    counts = t.outcome.value_counts().to_dict()
    bad = sum(counts.get(k, 0) for k in ("silent", "poor error", "crash"))
    print(f"\nprobe: {len(t)} cases: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; {bad} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main("--markdown" in sys.argv))
