"""Benchmark: one epoch of augmented Fashion-MNIST training batches, `TensorLoader` against torchvision's `DataLoader`.

What it measures
    The wall-clock time of one epoch over the 60,000 Fashion-MNIST training images with random crop (28×28 from the
    image zero-padded by 4), random horizontal flip and normalisation, batch size 128 (469 batches), every batch
    consumed with a cheap reduction (``x.sum()``, ``y.sum()``), through

    * ``TensorLoader``       ``paper_repro.data.TensorLoader(load_dataset("fashion-mnist", "train"), crop=4, flip=True)``:
                             the split resident as one normalised, padded float32 tensor; crop+flip as one batched gather;
    * ``DataLoader(nw=0)``   ``torchvision.datasets.FashionMNIST`` + ``torch.utils.data.DataLoader(shuffle=True)`` with
                             ``Compose([RandomCrop(28, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(...)])``,
                             in the main process;
    * ``DataLoader(nw=2)``   the same with ``num_workers=2, persistent_workers=True`` (worker start-up is reported
                             separately, not charged to the timed epochs).

    Before timing it checks that the two pipelines are equivalent at the level that matters for training: both read
    the same images and labels; same number of batches per epoch, same batch shapes and dtypes, every label seen once
    per epoch, per-epoch pixel mean/std of the augmented batches (padding pixels included) within 0.02 of each other;
    and that two ``TensorLoader`` constructions with the same seed give the identical first batch. A failed check
    stops the script (exit status 1) before any timing.

    Timing follows the project's rule for a shared, noisy machine: the three epochs are interleaved
    (``paper_repro.core.interleaved``, one warm-up round, then ``--repeats`` rounds), and compared by their best
    (minimum) time (``timing_summary``). One-off setup costs (reading the dataset, normalising and padding it,
    staging and opening the torchvision dataset, starting the workers) are printed separately and are not part of the
    epoch times. Staging decompresses the IDX files into a temporary directory (removed at exit); nothing is
    written into the repository.

How to run
    make bench                                   (from the repository root; gets the data first)
    .venv/bin/python bench/loader.py [--repeats 5] [--batch-size 128]

How to read it
    The table gives best/median seconds per epoch, the speed-up over the faster ``DataLoader`` configuration, and
    images per second from the best epoch. The last line of stdout is always exactly

        ratio=<best DataLoader epoch seconds (faster of num_workers 0 and 2) / best TensorLoader epoch seconds>

    with two decimals: how many times faster ``TensorLoader`` serves an epoch than the better torchvision
    configuration on this machine. The acceptance target is ratio >= 8.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from paper_repro.core import interleaved, timing_summary
from paper_repro.data import TensorLoader, find_dataset, load_dataset

TOL = 0.02  # allowed difference of the per-epoch pixel mean and std between the two pipelines
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fail(msg: str):
    "Stop with a clear message (stderr, exit status 1)."
    raise SystemExit(f"bench/loader.py: {msg}")


def consume(loader) -> float:
    "Iterate one epoch, touching every batch with a cheap reduction so no work can be skipped."
    acc = 0.0
    for x, y in loader: acc += float(x.sum()) + float(y.sum())
    return acc


def epoch_stats(loader, num_classes: int = 10) -> dict:
    "One epoch: batch count, the set of batch shapes/dtypes in order, label counts, pixel mean/std (float64 sums)."
    n = 0; s = s2 = 0.0; count = 0; shapes = []; counts = torch.zeros(num_classes, dtype=torch.int64)
    for x, y in loader:
        n += 1
        shapes.append((tuple(x.shape), x.dtype, tuple(y.shape), y.dtype))
        xd = x.double(); s += float(xd.sum()); s2 += float((xd*xd).sum()); count += xd.numel()
        counts += torch.bincount(y, minlength=num_classes)
    mean = s/count
    return dict(batches=n, shapes=shapes, counts=counts, mean=mean, std=(s2/count - mean*mean)**0.5)


def stage_torchvision(src: Path, root: Path) -> Path:
    "Decompress the IDX files from `src` into root/FashionMNIST/raw/, where torchvision's FashionMNIST looks."
    raw = root/"FashionMNIST"/"raw"; raw.mkdir(parents=True)
    for stem in RAW_FILES:
        if (src/stem).exists(): shutil.copyfile(src/stem, raw/stem)
        elif (src/f"{stem}.gz").exists():
            with gzip.open(src/f"{stem}.gz", "rb") as fi, open(raw/stem, "wb") as fo: shutil.copyfileobj(fi, fo)
        else: fail(f"{src} has neither {stem} nor {stem}.gz; run `make data`")
    return raw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (default 5; one warm-up round is added)")
    ap.add_argument("--batch-size", type=int, default=128, help="batch size of both pipelines (default 128)")
    args = ap.parse_args(argv)
    if args.repeats < 1: fail(f"--repeats={args.repeats}: use 1 or more")
    if args.batch_size < 1: fail(f"--batch-size={args.batch_size}: use 1 or more")
    bs = args.batch_size

    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    src = find_dataset("fashion-mnist")
    if src is None: fail("Fashion-MNIST not found (paper_repro.data.find_dataset('fashion-mnist') returned None); run `make data`")

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, torch.get_num_threads()={torch.get_num_threads()}, "
          f"cpus={os.cpu_count()}")
    print(f"Fashion-MNIST from {src}; batch size {bs}; crop 28 with padding 4, horizontal flip, normalise; "
          f"{args.repeats} interleaved repeats after 1 warm-up round")

    # ---- setup (reported, not part of the epoch times) ----
    t0 = time.perf_counter(); tr = load_dataset("fashion-mnist", "train"); t_load = time.perf_counter() - t0
    t0 = time.perf_counter(); tl = TensorLoader(tr, batch_size=bs, crop=4, flip=True, seed=0, device="cpu"); t_ctor = time.perf_counter() - t0
    mean, std = tr.mean, tr.std

    tmp = tempfile.TemporaryDirectory(prefix="bench-loader-")
    t0 = time.perf_counter(); stage_torchvision(src, Path(tmp.name)); t_stage = time.perf_counter() - t0
    tf = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    t0 = time.perf_counter(); ds = torchvision.datasets.FashionMNIST(tmp.name, train=True, transform=tf); t_tvds = time.perf_counter() - t0
    dl0 = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=0)
    dl2 = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=2, persistent_workers=True)

    # ---- equivalence checks (before any timing) ----
    problems = []
    n = len(tr)
    expect = -(-n//bs)
    if not (torch.equal(tr.x.squeeze(1), ds.data) and torch.equal(tr.y, ds.targets.long())):
        problems.append("load_dataset and torchvision.datasets.FashionMNIST read different images or labels")
    if not len(tl) == len(dl0) == len(dl2) == expect:
        problems.append(f"len(): TensorLoader {len(tl)}, DataLoader {len(dl0)}/{len(dl2)}, expected {expect}")

    # determinism: a second construction with the same seed gives the identical first batch
    x_a, y_a = next(iter(tl))
    t0 = time.perf_counter(); tl_b = TensorLoader(tr, batch_size=bs, crop=4, flip=True, seed=0, device="cpu"); t_ctor2 = time.perf_counter() - t0
    x_b, y_b = next(iter(tl_b))
    x_c, _ = next(iter(tl_b))  # epoch 1 of the second loader: must differ from epoch 0
    determ = torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    if not determ: problems.append("TensorLoader(seed=0) built twice gives different first batches")
    if torch.equal(x_b, x_c): problems.append("TensorLoader gives the same first batch in epochs 0 and 1")
    del tl_b, x_a, y_a, x_b, y_b, x_c

    st_tl = epoch_stats(tl)
    t0 = time.perf_counter(); it = iter(dl2); first = next(it); t_workers = time.perf_counter() - t0  # start-up + 1st batch
    st_dl = epoch_stats(_chain(first, it)); del it, first
    x0, y0 = next(iter(dl0))  # the in-process configuration yields the same kind of batch
    if (x0.shape, x0.dtype, y0.dtype) != (st_dl["shapes"][0][0], st_dl["shapes"][0][1], st_dl["shapes"][0][3]):
        problems.append(f"DataLoader num_workers=0 batch {tuple(x0.shape)} {x0.dtype} differs from num_workers=2")
    del x0, y0

    for name, st in (("TensorLoader", st_tl), ("DataLoader", st_dl)):
        if st["batches"] != expect: problems.append(f"{name}: {st['batches']} batches in an epoch, expected {expect}")
    if st_tl["shapes"] != st_dl["shapes"]:
        diff = next((i, a, b) for i, (a, b) in enumerate(zip(st_tl["shapes"], st_dl["shapes"])) if a != b) \
            if any(a != b for a, b in zip(st_tl["shapes"], st_dl["shapes"])) else ("count", len(st_tl["shapes"]), len(st_dl["shapes"]))
        problems.append(f"batch shapes/dtypes differ (first difference: {diff})")
    if st_tl["shapes"] and (st_tl["shapes"][0][1], st_tl["shapes"][0][3]) != (torch.float32, torch.int64):
        problems.append(f"TensorLoader batches are {st_tl['shapes'][0][1]}/{st_tl['shapes'][0][3]}, expected float32/int64")
    true_counts = torch.bincount(tr.y, minlength=10)
    for name, st in (("TensorLoader", st_tl), ("DataLoader", st_dl)):
        if not torch.equal(st["counts"], true_counts): problems.append(f"{name}: an epoch does not see every example exactly once (label counts)")
    dm, dsd = abs(st_tl["mean"] - st_dl["mean"]), abs(st_tl["std"] - st_dl["std"])
    if dm > TOL or dsd > TOL: problems.append(f"per-epoch pixel mean/std differ by {dm:.4f}/{dsd:.4f} (> {TOL})")

    b0 = st_tl["shapes"][0]; bl = st_tl["shapes"][-1]
    print("\nequivalence checks")
    print(f"  same images and labels read by both            {'ok' if not any('read different' in p for p in problems) else 'FAIL'}")
    print(f"  batches per epoch                              TensorLoader {st_tl['batches']}, DataLoader {st_dl['batches']} (expected {expect})")
    print(f"  batch x/y                                      {b0[0]} {b0[1]} / {b0[2]} {b0[3]}; last {bl[0]}")
    print(f"  shapes and dtypes identical batch by batch     {'ok' if st_tl['shapes'] == st_dl['shapes'] else 'FAIL'}")
    print(f"  pixel mean (augmented, incl. padding)          TensorLoader {st_tl['mean']:+.4f}, DataLoader {st_dl['mean']:+.4f}, |diff| {dm:.4f}")
    print(f"  pixel std                                      TensorLoader {st_tl['std']:.4f}, DataLoader {st_dl['std']:.4f}, |diff| {dsd:.4f}")
    print(f"  same seed -> identical first batch             {'ok' if determ else 'FAIL'}")
    if problems: fail("the pipelines are not equivalent:\n  " + "\n  ".join(problems))

    print("\nsetup (not included in the epoch times)")
    print(f"  TensorLoader: load_dataset {t_load:.3f} s + TensorLoader() (normalise + pad) {t_ctor:.3f} s "
          f"= {t_load + t_ctor:.3f} s   (second construction {t_ctor2:.3f} s)")
    print(f"  torchvision:  stage (gunzip to temp dir) {t_stage:.3f} s + FashionMNIST() {t_tvds:.3f} s "
          f"= {t_stage + t_tvds:.3f} s;  num_workers=2 start-up + first batch {t_workers:.3f} s")

    # ---- timing ----
    fns = {"TensorLoader": lambda: consume(tl), "DataLoader(nw=0)": lambda: consume(dl0), "DataLoader(nw=2)": lambda: consume(dl2)}
    times = interleaved(fns, repeats=args.repeats, warmup=1)
    best = times.groupby("name")["seconds"].min()
    ref = min(("DataLoader(nw=0)", "DataLoader(nw=2)"), key=lambda k: best[k])
    summary = timing_summary(times, baseline=ref)
    summary["images_per_s"] = (n/summary["best"]).round(0).astype(int)
    print(f"\none epoch of {n} images, {expect} batches of {bs} (seconds; speedup = best {ref} / best)")
    with __import__("pandas").option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(summary.to_string())

    del dl2  # shut the persistent workers down before the staged files go
    tmp.cleanup()
    ratio = best[ref]/best["TensorLoader"]
    sys.stdout.flush()
    print(f"ratio={ratio:.2f}", flush=True)


def _chain(first, it):
    yield first
    yield from it


if __name__ == "__main__":
    main()
