"""paper_repro.train under DDP: `fit` in two gloo processes, started by torchrun (fit joins the group itself) and by
torch.multiprocessing in a group the caller initialised, leaves identical replicas equal to one process's `fit` on
the same global batch, with the same history; a fixed mask stays exact, score models train the same; a global
batch that does not split over the processes is refused."""
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from paper_repro.data import load_dataset
from paper_repro.masks import Mask, masked_layers, random_mask, to_masked
from paper_repro.models import get_model, same_state
from paper_repro.recipes import get_recipe
from paper_repro.train import dist_info, fit, is_main

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.heavy]   # starts processes

N_TRAIN = 613  # 9 global batches of 64 and one of 37, which splits 18/19 over two processes
RECIPE = get_recipe("cpu", epochs=1, batch_size=64, lr=0.1)  # SGD, Nesterov momentum 0.9, weight decay, cosine
ATOL = 1e-6
TESTS = Path(__file__).resolve().parent


def lenet(**kw):
    return get_model("lenet-300-100", in_channels=1, input_size=8, seed=0, **kw)


def digits():
    part = lambda s, n: dataclasses.replace(s, x=s.x[:n], y=s.y[:n], indices=s.indices[:n])
    return {"train": part(load_dataset("digits", "train"), N_TRAIN), "test": load_dataset("digits", "test")}


def l2(model):
    return 1e-4 * sum((p**2).sum() for p in model.parameters())


def score_reg(model):
    return 3e-4 * sum((l.scores**2).sum() for l in masked_layers(model).values())


MASK = random_mask(lenet(), 0.1, seed=0)


def run_case(case, **kw):
    "One fit: 'dense'; 'masked' (fixed 10% mask plus an extra L2 term); 'scores' (GEM-MINER style: scores only)."
    kw = dict(device="cpu", progress=False) | kw
    if case == "scores":
        model = to_masked(lenet(init="signed_constant"), rule="round", seed=0)
        recipe = RECIPE.replace(lr=1.0, weight_decay=0, trains="scores")
        return model, fit(model, digits(), recipe, extra_loss=score_reg, **kw)
    model = lenet()
    masked = case == "masked"
    return model, fit(model, digits(), RECIPE, mask=MASK if masked else None, extra_loss=l2 if masked else None, **kw)


def run_cases(cases, out, **kw):
    "Run `cases` in this process and save each one's state and history to out/rank<r>.pt."
    res = {}
    for c in cases:
        model, hist = run_case(c, **kw)
        res[c] = dict(state=model.state_dict(), history=hist)
    torch.save(res, Path(out) / f"rank{dist_info()[0]}.pt")


def cached_case(out):
    "The dense fit as a cached run: every rank trains, rank 0 alone stores it; save what each rank got back."
    from paper_repro.runs import Result, cached_run
    def fn(config, workdir):
        model, hist = run_case("dense", checkpoint=workdir / "checkpoint.pt")
        return Result(hist, tensors=dict(state=model.state_dict()), info=dict(rank=dist_info()[0]))
    r = cached_run("ddp", dict(case="dense"), fn, root=Path(out) / "runs")
    torch.save(dict(path=str(r.path), state=r.tensors["state"]), Path(out) / f"cached{dist_info()[0]}.pt")


def load_ranks(out):
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _spawned(rank, port, cases, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        run_cases(cases, out)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process():
    return {c: run_case(c) for c in ("dense", "masked", "scores")}


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    "`torchrun --nproc_per_node 2`: fit finds torchrun's environment and initialises the gloo group itself."
    out = tmp_path_factory.mktemp("torchrun")
    script = out / "train.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(TESTS)!r}); from test_ddp import run_cases\n"
                      f"run_cases(['dense'], sys.argv[1], progress=True, checkpoint=sys.argv[1] + '/ck.pt')\n"
                      f"from test_ddp import cached_case; cached_case(sys.argv[1])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(out)],
                       capture_output=True, text=True, env=env | dict(OMP_NUM_THREADS="1"), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return load_ranks(out), p.stderr, out


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    "Two processes from torch.multiprocessing, in a gloo group they initialise before calling fit."
    out = tmp_path_factory.mktemp("spawn")
    mp.spawn(_spawned, args=(free_port(), ["masked", "scores"], str(out)), nprocs=2)
    return load_ranks(out)


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def check_equal(ranks, case, one_process):
    "Both replicas identical; equal to one process's weights within ATOL; the same history (values within 1e-5)."
    a, b = (r[case] for r in ranks)
    assert same_state(a["state"], b["state"]), case
    model, hist = one_process[case]
    d = max_diff(model.state_dict(), a["state"])
    print(f"{case}: max |DDP - one process| = {d:.2e}")
    assert d <= ATOL, (case, d)
    for r in (a, b):
        h = r["history"]
        assert h[["epoch", "split", "metric"]].equals(hist[["epoch", "split", "metric"]])
        assert torch.allclose(torch.tensor(h.value.to_numpy()), torch.tensor(hist.value.to_numpy()), rtol=1e-5, atol=1e-6), case
        assert (h.density == hist.density).all() and (h.lr == hist.lr).all()
    return a


def test_torchrun_fit_equals_one_process(torchrun, one_process):
    ranks, stderr, out = torchrun
    a = check_equal(ranks, "dense", one_process)
    train_loss = lambda h: h.query("split == 'train' and metric == 'loss'").value.to_numpy()
    assert abs(train_loss(a["history"]) - train_loss(one_process["dense"][1])).max() < 1e-6
    assert stderr.count("fit sgd lr=0.1:   0%") == 1, stderr[-3000:]  # one progress bar: rank 0's
    ck = torch.load(out / "ck.pt", weights_only=True)  # written by rank 0 after the last epoch
    assert ck["epoch"] == RECIPE.epochs and same_state(ck["model"], a["state"])


def test_torchrun_cached_run_is_stored_once(torchrun):
    """A cached run under torchrun: both ranks train it (fit is collective), rank 0 alone locks and stores it, and
    both get the one finished folder back, holding the replicas' weights."""
    ranks, _, out = torchrun
    got = [torch.load(out / f"cached{r}.pt", weights_only=True) for r in (0, 1)]
    folders = sorted(p.name for p in (out / "runs").iterdir())
    assert len(folders) == 1 and not folders[0].endswith(".partial") and (out / "runs" / folders[0] / "done").exists(), folders
    assert got[0]["path"] == got[1]["path"] == str(out / "runs" / folders[0])
    assert same_state(got[0]["state"], ranks[0]["dense"]["state"])
    from paper_repro.runs import Run
    assert Run("ddp", folders[0].split("-", 1)[1], out / "runs" / folders[0], True).info["rank"] == 0


def test_spawned_masked_and_score_models(spawned, one_process):
    a = check_equal(spawned, "masked", one_process)
    for r in spawned:
        state = r["masked"]["state"]
        for n, m in MASK.items():
            assert (state[n][~m] == 0).all(), n  # pruned weights exactly zero on every replica
        assert Mask.from_weights({n: state[n] for n in MASK}) == MASK
    assert "l2" in set(a["history"].metric)
    check_equal(spawned, "scores", one_process)


def test_batch_not_divisible_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert dist_info() == (1, 2) and not is_main()
    with pytest.raises(ValueError, match=r"batch_size=63 is the global batch, shared by 2 processes: use a multiple of 2"):
        fit(lenet(), digits(), RECIPE.replace(batch_size=63), device="cpu", progress=False)
    assert not dist.is_initialized()  # refused before joining any group
