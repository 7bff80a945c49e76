"""Benchmark: the cost of training through a mask, against the same dense training step.

What it measures
    The wall-clock time of one training step (forward, cross-entropy, backward, optimizer step; SGD with momentum 0.9
    and weight decay 5e-4) on random inputs, for

    * ``dense``     the plain model from ``paper_repro.models.get_model``;
    * ``fixed``     the same model with a fixed 5%-density random mask, applied the library's way
                    (``paper_repro.masks.apply_mask`` + ``keep_masks``: the plain forward pass, and one fused
                    ``torch._foreach_mul_`` after every optimizer step);
    * ``scores``    the same model with learnable scores (``to_masked(rule="round")``, GEM-MINER's rule), weights frozen,
                    only the scores trained: forward computes w ⊙ r(p) ⊙ q through the straight-through estimator, and
                    the scores are projected to [0, 1] after every step.

    Three settings: LeNet-300-100 on 28×28×1 at batch 60 and at batch 512, and ResNet-20 on 32×32×3 at batch 64.
    Before timing, it checks the masked step keeps the mask (the pruned weights are exactly zero after the steps).

    Timing follows the project's rule for a shared, noisy machine: within each setting the three variants are
    interleaved (``paper_repro.core.interleaved``, warm-up rounds first), each timed sample being ``--steps`` steps,
    and compared by their best (minimum) time (``timing_summary``).

How to run
    make bench                                   (runs every benchmark)
    .venv/bin/python bench/mask_overhead.py [--repeats 15] [--steps 20]

How to read it
    One table per setting: best and median milliseconds per step and the ratio to dense. The last line of stdout is
    always exactly

        ratio=<worst fixed-mask ratio over the three settings>

    with three decimals. The acceptance target is ratio <= 1.05. The score-mask ratios are reported, not targeted:
    they pay for the mask multiply and the score gradient (a tensor the size of the weights), as GEM-MINER must.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from paper_repro.core import interleaved, timing_summary
from paper_repro.masks import apply_mask, keep_masks, masked_layers, random_mask, to_masked, get_mask
from paper_repro.models import get_model

SETTINGS = [("lenet-300-100", dict(in_channels=1, input_size=28), 60),
            ("lenet-300-100", dict(in_channels=1, input_size=28), 512),
            ("resnet20", dict(), 64)]


def make_step(model, params, batch, shape, seed=0, hook_model=None):
    "A zero-argument function running `steps` SGD steps of `model` on fixed random batches."
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    if hook_model is not None: keep_masks(opt, hook_model)
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def setting(name, kw, batch, steps, repeats, density=0.05):
    shape = (kw.get("in_channels", 3), kw.get("input_size", 32), kw.get("input_size", 32))
    dense = get_model(name, seed=0, **kw).train()
    fixed = get_model(name, seed=0, **kw).train()
    mask = random_mask(fixed, density, seed=0)
    apply_mask(fixed, mask)
    scored = to_masked(get_model(name, seed=0, **kw), rule="round", seed=0).train()
    for p in scored.parameters(): p.requires_grad_(False)
    scores = [l.scores.requires_grad_(True) for l in masked_layers(scored).values()]

    fns = {"dense": make_step(dense, dense.parameters(), batch, shape),
           "fixed": make_step(fixed, fixed.parameters(), batch, shape, hook_model=fixed),
           "scores": make_step(scored, scores, batch, shape, hook_model=scored)}
    for f in fns.values(): f()
    if get_mask(fixed) != mask:                       # the check before timing: the mask survived the step
        print(f"FAILED: {name} fixed mask changed after a step", file=sys.stderr); sys.exit(1)
    many = {k: (lambda f=f: [f() for _ in range(steps)]) for k, f in fns.items()}
    times = interleaved(many, repeats=repeats, warmup=2)
    times["seconds"] /= steps
    s = timing_summary(times)
    s["ms_best"], s["ms_median"] = 1000 * s.pop("best"), 1000 * s.pop("median")
    s["ratio"] = s.ms_best / s.loc["dense", "ms_best"]      # cost relative to the dense step (1.00 = free)
    return s.round(3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed sample")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.repeats} interleaved repeats of {args.steps} steps, best time")
    worst = 0.0
    for name, kw, batch in SETTINGS:
        s = setting(name, kw, batch, args.steps, args.repeats)
        print(f"\n{name}, batch {batch}, density 0.05")
        print(s.to_string())
        worst = max(worst, float(s.loc["fixed", "ratio"]))
    print(f"ratio={worst:.3f}")


if __name__ == "__main__":
    main()
