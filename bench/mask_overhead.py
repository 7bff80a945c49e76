"""Benchmark: the cost of training through a mask, against the same dense training step.

What it measures
    The wall-clock time of one training step of the library's engine (``paper_repro.train.train_step``: forward,
    cross-entropy, backward, optimizer step; ``make_optimizer`` with SGD, momentum 0.9, weight decay 5e-4) on random
    inputs, for

    * ``dense``       the plain model from ``paper_repro.models.get_model``;
    * ``fixed``       the same model under a fixed 5%-density random mask (``apply_mask``): the plain forward pass,
                      and the mask applied to the gradient inside the optimizer's step (``MaskedSGD``);
    * ``scores``      the same model with learnable scores (``to_masked(rule="round")``, GEM-MINER's rule), weights
                      frozen, only the scores trained: forward computes w ⊙ r(p) ⊙ q through the straight-through
                      estimator, and ``keep_masks`` projects the scores to [0, 1] after every step;
    * ``torch_dense`` / ``torch_hook``  for reference: the same step with ``torch.optim.SGD``, dense and with the generic
                      ``keep_masks`` hook (one ``_foreach_mul_`` over the weights after each step) that any
                      optimizer can use.

    Three settings: LeNet-300-100 on 28×28×1 at batch 60 and at batch 512, and ResNet-20 on 32×32×3 at batch 64.
    Before timing, it checks that both masked steps keep the mask (the pruned weights are exactly zero after steps).

    Timing follows the project's rule for a shared, noisy machine: within each setting the variants are
    interleaved (``paper_repro.core.interleaved``, warm-up rounds first), each timed sample being ``--steps`` steps,
    and compared by their best (minimum) time (``timing_summary``).

How to run
    make bench                                   (runs every benchmark)
    .venv/bin/python bench/mask_overhead.py [--repeats 15] [--steps 20]

How to read it
    One table per setting: best and median milliseconds per step and the ratio to dense. The last line of stdout is
    always exactly

        ratio=<worst fixed-mask ratio over the three settings>

    with three decimals: the engine's fixed-mask step over the engine's dense step. The acceptance target is
    ratio <= 1.05. The score-mask ratios are reported, not targeted: they pay for the mask multiply and the score
    gradient (a tensor the size of the weights), as GEM-MINER must.
"""
from __future__ import annotations

import argparse
import sys

import torch

from paper_repro.core import interleaved, timing_summary
from paper_repro.masks import apply_mask, get_mask, keep_masks, random_mask, to_masked
from paper_repro.models import get_model
from paper_repro.recipes import Recipe
from paper_repro.optim import make_optimizer
from paper_repro.train import train_step

SETTINGS = [("lenet-300-100", dict(in_channels=1, input_size=28), 60),
            ("lenet-300-100", dict(in_channels=1, input_size=28), 512),
            ("resnet20", dict(), 64)]
RECIPE = Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)


def engine_step(model, trains="weights"):
    "The engine's step: `make_optimizer` (the gradient masked in its step) + `keep_masks` (score projection), as `fit` does."
    opt = make_optimizer(model, RECIPE.replace(trains=trains))
    keep_masks(opt, model)
    return train_step(model, opt)


def torch_step(model, hook=False):
    "Reference: the same step with torch.optim.SGD, optionally with the generic `keep_masks` hook."
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if hook: keep_masks(opt, model)
    return train_step(model, opt)


def setting(name, kw, batch, steps, repeats, density=0.05):
    shape = (kw.get("in_channels", 3), kw.get("input_size", 32), kw.get("input_size", 32))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    model = lambda: get_model(name, seed=0, **kw).train()
    mask = random_mask(model(), density, seed=0)
    fixed, hooked = apply_mask(model(), mask), apply_mask(model(), mask)
    fns = {"dense": engine_step(model()), "fixed": engine_step(fixed),
           "scores": engine_step(to_masked(model(), rule="round", seed=0).train(), trains="scores"),
           "torch_dense": torch_step(model()), "torch_hook": torch_step(hooked, hook=True)}
    for f in fns.values(): f(x, y)
    for m in (fixed, hooked):
        if get_mask(m) != mask:                      # the check before timing: the mask survived the steps
            print(f"FAILED: {name} fixed mask changed after a step", file=sys.stderr); sys.exit(1)
    many = {k: (lambda f=f: [f(x, y) for _ in range(steps)]) for k, f in fns.items()}
    times = interleaved(many, repeats=repeats, warmup=2)
    times["seconds"] /= steps
    s = timing_summary(times)
    s["ms_best"], s["ms_median"] = 1000 * s.pop("best"), 1000 * s.pop("median")
    s["ratio"] = s.ms_best / s.loc["dense", "ms_best"]      # cost relative to the engine's dense step (1.00 = free)
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
