"""Benchmark: K small runs trained as one stack (`fit_stack`) against the same K runs trained one after another (`fit`).

What it measures
    The wall-clock time of a sweep unit's training: K runs of one network and recipe, each with its own seed
    (initialisation, random mask at density 0.2, batch order), for a fixed number of steps and one evaluation
    on a 1,000-image test split, computed

    * ``sequential``  ``[fit(model_k, data, recipe, mask=mask_k, seed=k) for k in range(K)]``, today's sweep;
    * ``stacked``     ``fit_stack(models, data, recipe, masks=masks, seeds=range(K))``: one stacked model.

    Both do the same work: the same runs, steps, evaluations, optimizer (SGD with momentum 0.9 and Nesterov, as
    the cpu recipe) and masks. Settings: LeNet-300-100 at batch 60 and small-cnn at batch 60 on Fashion-MNIST
    (the first 60 × steps training images), ResNet-20 at batch 128 on random 3×32×32 images (CIFAR's shape; only
    the time matters), for K = 2, 4, 8, 16. Before timing, one check per setting: after one step, the stack's first
    run is within 1e-4 of its own sequential run (a failed check stops the script, exit status 1). One step, because
    later steps amplify float rounding at a rate set by the training, not by the stack: ResNet-20 on random labels
    grows a 1e-8 difference (one thread against two, single runs) to 1e-5 in three steps.

    Timing follows the project's rule for a shared, noisy machine: for each setting and K the two ways are
    interleaved (``paper_repro.core.interleaved``, one warm-up round, then ``--repeats`` rounds) and compared by
    their best time. Torch uses ``--threads`` CPU threads (default 2, this machine's cores).

    With ``--ceiling`` it first times the three linear layers of LeNet-300-100 alone (forward and backward, no
    optimizer, data or evaluation), K runs through the library's ``stacked_linear`` against K runs one at a time:
    about the most a stack of this network can gain on this machine.

How to run
    .venv/bin/python bench/stacked.py [--repeats 3] [--threads 2] [--ks 2,4,8,16] [--quick] [--ceiling]

How to read it
    One row per (network, K): best seconds of each way, runs per second of each, and the speed-up
    sequential/stacked. The last line of stdout is always exactly

        ratio=<best LeNet-300-100 speed-up over K>

    with two decimals: how many times more LeNet-300-100 runs per second a stack trains than one-at-a-time at the
    best K. The acceptance target ([stacked-runs]) is ratio >= 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings

import pandas as pd
import torch
import torch.nn.functional as F

from paper_repro.core import interleaved, timing_summary
from paper_repro.data import DataSplit, load_dataset
from paper_repro.masks import random_mask
from paper_repro.models import get_model
from paper_repro.recipes import get_recipe
from paper_repro.stack import stacked_linear
from paper_repro.train import fit, fit_stack

SETTINGS = {  # network: (dataset or None for random CIFAR-shaped images, batch size, steps, input channels, side)
    "lenet-300-100": ("fashion-mnist", 60, 50, 1, 28),
    "small-cnn": ("fashion-mnist", 60, 20, 1, 28),
    "resnet20": (None, 128, 3, 3, 32),
}

def _subset(split: DataSplit, n: int) -> DataSplit:
    import dataclasses
    return dataclasses.replace(split, x=split.x[:n], y=split.y[:n], indices=split.indices[:n])

def data_for(name: str) -> dict[str, DataSplit]:
    data, batch, steps, c, side = SETTINGS[name]
    if data is not None:
        return {"train": _subset(load_dataset(data, "train"), batch*steps), "test": _subset(load_dataset(data, "test"), 1000)}
    g = torch.Generator().manual_seed(0)
    def split(n, which):
        x = torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return DataSplit(x, y, "random-cifar", which, tuple(map(str, range(10))), (0.5,)*c, (0.25,)*c, "random", torch.arange(n))
    return {"train": split(batch*steps, "train"), "test": split(1000, "test")}

def runs(name: str, K: int):
    _, _, _, c, side = SETTINGS[name]
    models = [get_model(name, num_classes=10, in_channels=c, input_size=side, seed=k) for k in range(K)]
    return models, [random_mask(m, 0.2, seed=k) for k, m in enumerate(models)]

def sequential(name, K, data, recipe):
    models, masks = runs(name, K)
    return models, [fit(m, data, recipe, mask=mk, seed=k, progress=False) for k, (m, mk) in enumerate(zip(models, masks))]

def stacked(name, K, data, recipe):
    models, masks = runs(name, K)
    return models, fit_stack(models, data, recipe, masks=masks, seeds=list(range(K)), progress=False)

def check(name, data, recipe):
    "One step (the first batch only): a stacked run's weights are its sequential run's, to float rounding."
    one = dict(data, train=_subset(data["train"], recipe.batch_size))
    a, _ = sequential(name, 2, one, recipe); b, _ = stacked(name, 2, one, recipe)
    gap = max(float((x - y).abs().max()) for x, y in zip(a[0].state_dict().values(), b[0].state_dict().values()) if x.is_floating_point())
    print(f"check {name}: after one step, stacked run 0 vs its sequential run, weights max|Δ| = {gap:.1e}", flush=True)
    if not gap <= 1e-4: sys.exit(f"check failed: {name} stacked and sequential runs differ by {gap}")

def matmul_ceiling(ks, repeats, steps=50):
    """The most a stack can gain for LeNet-300-100 at batch 60: its three linear layers' forward and backward alone (no
    optimizer, data or evaluation), K runs through the library's `stacked_linear` vs K runs one at a time (`F.linear`)."""
    dims, B, rows = [784, 300, 100, 10], 60, []
    def passes(K, stacked):
        n = K if stacked else 1
        ws = [torch.randn(n*o, i, requires_grad=True) for i, o in zip(dims, dims[1:])]
        bs = [torch.randn(n*o, requires_grad=True) for o in dims[1:]]
        x = torch.randn(B, n*784)
        def run():
            for _ in range(steps if stacked else steps*K):
                h = x
                for j, (w, b) in enumerate(zip(ws, bs)):
                    h = stacked_linear(h, w, b, K) if stacked else F.linear(h, w, b)
                    h = h.relu() if j < 2 else h
                h.sum().backward()
                for t in ws + bs: t.grad = None
        return run
    for K in ks:
        t = interleaved({"sequential": passes(K, False), "stacked": passes(K, True)}, repeats=repeats, warmup=1)
        s = timing_summary(t, baseline="sequential")
        rows.append(dict(K=K, sequential_s=s.loc["sequential", "best"], stacked_s=s.loc["stacked", "best"],
                         speedup=s.loc["stacked", "speedup_vs_sequential"]))
    print("layers alone (LeNet-300-100, batch 60, forward + backward of its three linear layers):")
    print(pd.DataFrame(rows).round(4).to_string(index=False), flush=True)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", default="2,4,8,16")
    ap.add_argument("--networks", default=",".join(SETTINGS))
    ap.add_argument("--quick", action="store_true", help="one repeat, K = 2 and 8 (a smoke run)")
    ap.add_argument("--ceiling", action="store_true", help="first, the linear layers alone: about the most stacking LeNet-300-100 can gain")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ks = [2, 8] if a.quick else [int(k) for k in a.ks.split(",")]
    repeats = 1 if a.quick else a.repeats
    warnings.filterwarnings("ignore", message=".*num_batches_tracked.*")
    if a.ceiling: matmul_ceiling(ks, repeats)
    rows = []
    for name in a.networks.split(","):
        data, batch, steps, *_ = SETTINGS[name]
        split = data_for(name)
        recipe = get_recipe("cpu", epochs=1, batch_size=batch, lr=0.05)
        check(name, split, recipe)
        for K in ks:
            t = interleaved({"sequential": lambda: sequential(name, K, split, recipe), "stacked": lambda: stacked(name, K, split, recipe)},
                            repeats=repeats, warmup=1)
            s = timing_summary(t, baseline="sequential")
            rows.append(dict(network=name, batch=batch, steps=steps, K=K, sequential_s=s.loc["sequential", "best"],
                             stacked_s=s.loc["stacked", "best"], runs_per_s_seq=K/s.loc["sequential", "best"],
                             runs_per_s_stack=K/s.loc["stacked", "best"], speedup=s.loc["stacked", "speedup_vs_sequential"]))
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{torch.get_num_threads()} threads, {repeats} interleaved repeats, best times (device: cpu)")
    print(table.round(3).to_string(index=False))
    lenet = table[table.network == "lenet-300-100"]
    best = lenet.loc[lenet.speedup.idxmax()] if len(lenet) else table.loc[table.speedup.idxmax()]
    print(f"best: {best.network} at K={int(best.K)}: {best.speedup:.2f}x the runs per second of one-at-a-time")
    print(f"ratio={best.speedup:.2f}", flush=True)

if __name__ == "__main__":
    main()
