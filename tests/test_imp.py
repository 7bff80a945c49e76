"""paper_repro.imp: the schedule (R = ⌈log_{1-f} d⌉, exact counts, the last pruning exactly to the target), one
pruning step against a stable-sort reference, long/short round recipes and the paper's IMP recipes, IMP on the
digits (masks nest and follow the schedule, pruned weights exactly 0 in every round), cold and warm rewinding to
the exact saved state (BatchNorm buffers included), a killed IMP resuming per round, rounds shared across targets,
cache=False, finetuning the ticket, bad input."""
import math
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd
import pytest
import torch

import paper_repro.imp as imp_module
from paper_repro.data import load_dataset
from paper_repro.masks import Mask, get_mask, keep_count
from paper_repro.models import get_model, same_state
from paper_repro.runs import STATS
from paper_repro.recipes import get_recipe, lr_at, Recipe, RECIPES
from paper_repro.train import Callback, evaluate, fit, Snapshot
from paper_repro.tickets import finetune, arch_for, Ticket
from paper_repro.imp import imp_level, lottery_sanity, omp_mask, reinitialised, tail_recipe
from paper_repro.imp import (IMPResult, imp, imp_counts, imp_prune, imp_rounds, imp_schedule, rewound,
                             round_recipe)

ARCH = arch_for("digits", "lenet-300-100", seed=0)
RES_ARCH = arch_for("digits", "resnet20", width=0.25, seed=0)   # has BatchNorm
QUICK = get_recipe("cpu", epochs=2, batch_size=64, lr=0.1)
PER_EPOCH = math.ceil(1438 / 64)                                # digits' training split at batch 64
N_LENET = 64 * 300 + 300 * 100 + 100 * 10                       # prunable weights of LeNet-300-100 on 8x8 inputs
N_RESNET20 = Mask.ones(get_model("resnet20")).size


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def module_root(tmp_path_factory):
    "One run cache for the module's shared IMP runs (the function-level tests use their own tmp_path)."
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("imp-runs")
        mp.setenv("PAPER_REPRO_OUTPUTS", str(root))
        yield root


@pytest.fixture(scope="module")
def digits():
    return {"train": load_dataset("digits", "train"), "test": load_dataset("digits", "test")}


@pytest.fixture(scope="module")
def short30(module_root):
    "Short-cold IMP of LeNet-300-100 on the digits to 30%: one epoch a round, 6 prunings."
    return imp(ARCH, "digits", 0.3, QUICK, epochs_per_round=1, progress=False)


def half_up(n, f):
    return int((Decimal(repr(f)) * n).to_integral_value(ROUND_HALF_UP))


def ref_prune(mask, weights, k):
    "Reference: the k largest |w| among the kept entries, by a stable full sort (ties to lower flat index)."
    flat = torch.cat([torch.where(mask[n], weights[n].abs(), torch.tensor(-1.0)).flatten() for n in mask])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(-flat, stable=True).indices[:k]] = True
    return Mask({n: t.view(mask[n].shape) for n, t in zip(mask, keep.split([mask[n].numel() for n in mask]))})


def subset(a, b):
    return all(not (a[n] & ~b[n]).any() for n in a)


def plain(state):
    return {k: v for k, v in state.items() if not k.endswith(".mask")}


# ---------------------------------------------------------------- 1. the schedule

@pytest.mark.parametrize("density,fraction,rounds", [
    (0.014, 0.2, 20), (0.005, 0.2, 24), (0.3, 0.2, 6), (0.5, 0.2, 4), (0.64, 0.2, 2), (0.8, 0.2, 1), (1, 0.2, 0),
    (0.25, 0.5, 2), (0.1, 0.5, 4), (0.9, 0.1, 1), (0.81, 0.1, 2),
])
def test_imp_rounds_by_hand(density, fraction, rounds):
    """Rare Gems: 1.4% in 20 rounds, 0.5% in 24; exact powers (0.64 = 0.8², 0.81 = 0.9²) are not one round too many."""
    assert imp_rounds(density, fraction) == rounds


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.5, 0.37])
def test_imp_rounds_is_the_smallest_r_reaching_the_target(fraction):
    for d in torch.logspace(-4, 0, 300, dtype=torch.float64).tolist():
        r = imp_rounds(d, fraction)
        assert (1 - fraction) ** r <= d * (1 + 1e-9), (d, r)
        assert r == 0 or (1 - fraction) ** (r - 1) > d, (d, r)


def test_imp_schedule():
    s = imp_schedule(0.014)
    assert len(s) == 21 and s[0] == 1 and s[-1] == 0.014
    assert all(math.isclose(s[r], 0.8 ** r) for r in range(20)) and s[19] > 0.014
    assert imp_schedule(1) == [1.0] and imp_schedule(0.8) == [1.0, 0.8]


@pytest.mark.parametrize("total", [N_LENET, 266_200, N_RESNET20, 1_000_003])
@pytest.mark.parametrize("density", [0.5, 0.2, 0.05, 0.014, 0.005])
def test_imp_counts_exact(total, density):
    c = imp_counts(total, density)
    assert c[0] == total and c[-1] == keep_count(total, density)
    assert len(c) - 1 == imp_rounds(density)                             # real networks: the formula's R exactly
    assert all(a > b for a, b in zip(c, c[1:]))
    for a, b in zip(c[:-2], c[1:-1]): assert a - b == half_up(a, 0.2)   # 20% of the remaining, halves up
    assert c[-2] > c[-1]                                                 # the last pruning goes to the target


def test_resnet20_to_1_4_percent_in_20_prunings():
    c = imp_counts(N_RESNET20, 0.014)
    assert len(c) == 21 and c[-1] / N_RESNET20 == keep_count(N_RESNET20, 0.014) / N_RESNET20
    assert c[-2] / N_RESNET20 > 0.014 > c[-1] / N_RESNET20 - 1e-4


@pytest.mark.parametrize("total", [1, 2, 3, 9, 17])
def test_imp_counts_tiny_totals_terminate(total):
    "Rounding can reach the target early (or stall at 2 weights); the schedule still ends exactly on it."
    c = imp_counts(total, 0.3) if keep_count(total, 0.3) else None
    if c is None: return
    assert c[-1] == keep_count(total, 0.3) and len(c) - 1 <= imp_rounds(0.3) and all(a > b for a, b in zip(c, c[1:]))


# ---------------------------------------------------------------- 2. one pruning step

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("density", [0.3, 0.05])
def test_imp_prune_follows_schedule_and_reference(seed, density):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (40, 30), "b.weight": (20, 40), "c.weight": (10, 20)}
    weights = {n: (torch.randn(s, generator=g) * 10).round() / 10 for n, s in shapes.items()}   # many ties
    mask = Mask({n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()})
    counts = imp_counts(mask.size, density)
    for k in counts[1:]:
        w = {n: t + 0.01 * torch.randn(t.shape, generator=g).round() for n, t in weights.items()}  # "trained" weights
        new = imp_prune(mask, w, density)
        assert new.nonzeros == k and subset(new, mask)
        assert new == ref_prune(mask, w, k)
        kept = torch.cat([w[n][new[n]].abs() for n in new]); gone = torch.cat([w[n][mask[n] & ~new[n]].abs() for n in new])
        assert kept.min() >= gone.max()                                   # every kept weight at least every pruned one
        mask = new
    assert mask.nonzeros == keep_count(mask.size, density)


def test_imp_prune_refuses_masks_off_the_schedule():
    w = {"a": torch.arange(10.0)}
    with pytest.raises(ValueError, match="keeps 10 of 10.*the target"):
        imp_prune(Mask({"a": torch.ones(10, dtype=torch.bool)}), w, 1.0)
    with pytest.raises(ValueError, match="keeps 9 of 10.*not a count"):
        imp_prune(Mask({"a": torch.arange(10) > 0}), w, 0.5)


# ---------------------------------------------------------------- 3. recipes

def test_paper_recipes():
    long, short = RECIPES["imp-resnet20"], RECIPES["imp-resnet20-short"]
    assert (long.optimizer, long.lr, long.momentum, long.nesterov, long.weight_decay, long.batch_size) == ("sgd", 0.1, 0.9, False, 1e-4, 128)
    assert (long.epochs, long.schedule, long.milestones, long.gamma, long.crop, long.flip) == (160, "multistep", (80, 120), 0.1, 4, True)
    assert short == long.replace(epochs=8, milestones=())
    assert [lr_at(short, e) for e in range(8)] == [lr_at(long, e) for e in range(8)] == [0.1] * 8


@pytest.mark.parametrize("epochs", [1, 8, 80, 81, 121, 160, 200])
def test_short_round_is_the_first_epochs_of_the_schedule(epochs):
    long = RECIPES["imp-resnet20"]
    r = round_recipe(long, epochs)
    assert r.epochs == epochs and r.milestones == tuple(m for m in (80, 120) if m < epochs)
    assert [lr_at(r, e) for e in range(min(epochs, 160))] == [lr_at(long, e) for e in range(min(epochs, 160))]
    assert round_recipe(long) is long


@pytest.mark.parametrize("bad,match", [(0, "epochs_per_round=0"), (-3, "epochs_per_round=-3"), (2.0, "epochs_per_round=2.0"),
                                       (True, "epochs_per_round=True")])
def test_round_recipe_bad_epochs(bad, match):
    with pytest.raises(ValueError, match=match): round_recipe(QUICK, bad)


def test_round_recipe_warmup_longer_than_round():
    with pytest.raises(ValueError, match="warms up over 5"): round_recipe(QUICK.replace(epochs=10, warmup=5), 4)


# ---------------------------------------------------------------- 4. IMP on the digits

def test_short_cold_imp_reaches_target_in_R_prunings(short30):
    r = short30
    assert isinstance(r, IMPResult) and len(r.runs) == imp_rounds(0.3) == 6
    counts = imp_counts(N_LENET, 0.3)
    assert r.rounds["round"].tolist() == list(range(6)) and r.rounds.kept.tolist() == counts[:-1]
    assert r.ticket.mask.nonzeros == counts[-1] == keep_count(N_LENET, 0.3)
    assert r.ticket.density == r.ticket.mask.nonzeros / N_LENET
    for i in range(6):
        assert subset(r.mask(i + 1), r.mask(i)) and r.mask(i + 1) == ref_prune(r.mask(i), r.state(i), counts[i + 1])


def test_every_pruned_weight_exactly_zero_in_every_round(short30):
    for i in range(6):
        state, mask = short30.state(i), short30.mask(i)
        for n, m in mask.items(): assert int((state[n][~m] != 0).sum()) == 0, (i, n)
        assert get_mask(short30.network(i)) == mask
    assert get_mask(short30.ticket.network()) == short30.ticket.mask


def test_history_rounds_and_pre_finetune_accuracy(short30, digits):
    h = short30.history
    assert h.columns.tolist() == ["round", "epoch", "split", "metric", "value", "density", "lr", "time"]
    assert sorted(h["round"].unique()) == list(range(6)) and h.time.is_monotonic_increasing
    pre = h.query("epoch == 0 and metric == 'acc'").set_index("round").value
    assert pre.tolist() == short30.rounds.pre_acc.tolist()
    for i in (0, 3): assert math.isclose(evaluate(short30.start(i), digits["test"])["acc"], pre[i], abs_tol=1e-12)
    assert (short30.rounds.acc > 0.8).all()
    assert math.isclose(short30.pre_finetune_acc, evaluate(short30.ticket.network(), digits["test"])["acc"], abs_tol=1e-12)
    assert short30.ticket.info["pre_finetune_acc"] == short30.pre_finetune_acc
    assert short30.ticket.key.startswith("imp-") and short30.ticket.arch == ARCH


def test_finished_imp_is_loaded_and_other_targets_share_rounds(short30):
    misses = STATS["misses"]
    again = imp(ARCH, "digits", 0.3, QUICK, epochs_per_round=1, progress=False)
    same = imp(ARCH, "digits", 0.3, round_recipe(QUICK, 1), progress=False)   # short written as its round recipe
    half = imp(ARCH, "digits", 0.5, QUICK, epochs_per_round=1, progress=False)
    assert STATS["misses"] == misses                                           # nothing trained
    assert again.rounds.cached.all() and same.rounds.cached.all() and half.rounds.cached.all() and len(half.runs) == 4
    assert again.ticket.key == same.ticket.key == short30.ticket.key != half.ticket.key
    assert half.ticket.mask.nonzeros == keep_count(N_LENET, 0.5)
    assert same_state(again.ticket.weights, short30.ticket.weights) and again.ticket.mask == short30.ticket.mask


def test_cache_false_with_splits_computes_the_same(short30, digits):
    mem = imp(ARCH, digits, 0.3, QUICK, epochs_per_round=1, cache=False, progress=False)
    assert mem.ticket.key is None and mem.ticket.mask == short30.ticket.mask
    pd.testing.assert_frame_equal(mem.history.drop(columns="time"), short30.history.drop(columns="time"))
    assert all(same_state(mem.state(i), short30.state(i)) for i in range(6))
    assert not mem.rounds.cached.any()


def test_finetuning_the_ticket_is_cached(short30):
    net, h = finetune(short30.ticket, "digits", QUICK, progress=False)
    hits = STATS["hits"]
    net2, h2 = finetune(short30.ticket, "digits", QUICK, progress=False)
    assert STATS["hits"] == hits + 1 and same_state(net, net2)
    assert Mask.from_weights(net) == short30.ticket.mask


def test_exclude_last_keeps_the_classifier_dense(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    r = imp(ARCH, "digits", 0.64, QUICK, epochs_per_round=1, exclude=("last",), progress=False)
    assert list(r.ticket.mask) == ["hidden.0.weight", "hidden.1.weight"]
    assert r.ticket.mask.nonzeros == keep_count(N_LENET - 1000, 0.64)
    assert (r.state(1)["fc.weight"] != 0).all()                              # trained, never pruned


# ---------------------------------------------------------------- 5. rewinding

@pytest.mark.parametrize("rewind", [0, 30])
def test_rewinding_restores_the_saved_state_under_the_new_mask(rewind, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    r = imp(RES_ARCH, "digits", 0.64, QUICK, rewind=rewind, progress=False)
    snap = Snapshot(iterations=[rewind])                                       # the same round 0, snapshotted on its own
    fit(get_model(**RES_ARCH), digits, QUICK, mask=Mask.ones(get_model(**RES_ARCH)), callbacks=[snap], progress=False)
    point = plain(snap.iterations[rewind])
    assert same_state(r.rewind_state, point)
    if rewind == 0: assert same_state(point, get_model(**RES_ARCH).state_dict())
    else: assert not torch.equal(point["bn1.running_var"], get_model(**RES_ARCH).state_dict()["bn1.running_var"])
    for net, mask in [(r.ticket.network(), r.ticket.mask), (r.start(1), r.mask(1))]:
        got = plain(net.state_dict())
        assert got.keys() == point.keys()
        for n, t in got.items():
            assert torch.equal(t, point[n] * mask[n] if n in mask else point[n]), n    # BatchNorm buffers too
    again = r.start(1)                                                         # round 1 trained from exactly there
    fit(again, digits, QUICK, mask=r.mask(1), progress=False)
    assert same_state(plain(again.state_dict()), r.state(1))
    assert same_state(r.init_state, get_model(**RES_ARCH).state_dict())


# ---------------------------------------------------------------- 6. resume

class Steps(Callback):
    def __init__(self, kill=None): self.n, self.kill = 0, kill
    def on_step(self, s):
        self.n += 1
        if s.iteration == self.kill: raise KeyboardInterrupt


@pytest.mark.parametrize("kill_round,rewind", [(2, 0), (0, 10)])
def test_killed_imp_resumes_in_the_round_it_was_in(kill_round, rewind, tmp_path, monkeypatch):
    """Killed 3 steps into the second epoch of a round: the rerun loads the finished rounds, resumes that round from
    its epoch-1 checkpoint (the warm snapshot too) and ends exactly as an uninterrupted IMP."""
    calls = []
    def counting_fit(model, data, recipe, callbacks=(), kill_call=None, **kw):
        steps = Steps(PER_EPOCH + 3 if len(calls) == kill_call else None)
        calls.append(steps)
        return fit(model, data, recipe, callbacks=[*callbacks, steps], **kw)

    args = (ARCH, "digits", 0.5, QUICK)
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path / "killed"))
    monkeypatch.setattr(imp_module, "fit", lambda *a, **kw: counting_fit(*a, kill_call=kill_round, **kw))
    with pytest.raises(KeyboardInterrupt): imp(*args, rewind=rewind, progress=False)
    assert [c.n for c in calls] == [2 * PER_EPOCH] * kill_round + [PER_EPOCH + 3]
    calls.clear()
    monkeypatch.setattr(imp_module, "fit", counting_fit)
    resumed = imp(*args, rewind=rewind, progress=False)
    assert [c.n for c in calls] == [PER_EPOCH] + [2 * PER_EPOCH] * (3 - kill_round)   # 4 rounds in all
    assert resumed.rounds.cached.tolist() == [True] * kill_round + [False] * (4 - kill_round)

    monkeypatch.setattr(imp_module, "fit", fit)
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path / "fresh"))
    fresh = imp(*args, rewind=rewind, progress=False)
    pd.testing.assert_frame_equal(resumed.history.drop(columns="time"), fresh.history.drop(columns="time"))
    assert all(same_state(resumed.state(i), fresh.state(i)) for i in range(4))
    assert same_state(resumed.rewind_state, fresh.rewind_state) and resumed.ticket.mask == fresh.ticket.mask
    assert resumed.ticket.key == fresh.ticket.key


# ---------------------------------------------------------------- 7. bad input

@pytest.mark.parametrize("change,match", [
    (dict(density=0), r"density=0.*\(0, 1\]"), (dict(density=1.5), "density=1.5"), (dict(density="5%"), "density='5%'"),
    (dict(density=1e-6), "keeps no weight"),
    (dict(fraction=0), r"fraction=0.*\(0, 1\)"), (dict(fraction=1.0), "fraction=1.0"), (dict(fraction=True), "fraction=True"),
    (dict(rewind=-1), r"rewind=-1.*up to 46"), (dict(rewind=47), r"rewind=47.*2 epochs × 23"), (dict(rewind=2.0), "rewind=2.0"),
    (dict(epochs_per_round=0), "epochs_per_round=0"), (dict(epochs_per_round=1.5), "epochs_per_round=1.5"),
    (dict(recipe="fast"), "'fast'.*imp-resnet20"), (dict(arch="lenet-300-100"), "arch='lenet-300-100'.*arch_for"),
    (dict(arch=dict(ARCH, seed=None)), r"arch\['seed'\]=None"), (dict(exclude=["fc.bias"]), r"exclude=\['fc.bias'\]"),
    (dict(exclude=["first", "hidden.1.weight", "last"]), "leaves no tensor"), (dict(seed=-1), "seed=-1"),
    (dict(data="digitz"), "digitz"), (dict(data={"train": None}), "dataset name or a dict"),
])
def test_bad_input(change, match, tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    kw = {**dict(arch=ARCH, data="digits", density=0.3, recipe=QUICK, progress=False), **change}
    with pytest.raises(ValueError, match=match): imp(**kw)
    assert not any(tmp_path.iterdir())                                         # nothing was trained


def test_splits_need_cache_false(digits):
    with pytest.raises(ValueError, match="cache=False"): imp(ARCH, digits, 0.3, QUICK, progress=False)
    with pytest.raises(ValueError, match="'train' and 'test'"): imp(ARCH, {"train": digits["train"]}, 0.3, QUICK, cache=False)


# --- Ma et al.: LT, RR, OMP, WR (lottery_sanity) ---------------------------------------------------------------------

STEP = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="multistep", milestones=(2,), epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def ma_resnet(tmp_path_factory):
    """Every variant on a quarter-width ResNet-20 (BatchNorm: rewinding must restore its running statistics too)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path_factory.mktemp("ma")))
    arch = arch_for("digits", "resnet20", width=0.25, seed=3)
    yield arch, lottery_sanity(arch, "digits", [0.8, 0.64], STEP, rewind_epoch=2, exclude=("first", "last"), progress=False)
    mp.undo()


def test_wr_rewinds_to_exactly_the_saved_epoch_t_state(ma_resnet, digits):
    arch, ls = ma_resnet
    snap = Snapshot(epochs=[2])
    net = get_model(**arch)
    fit(net, digits, STEP, mask=Mask.ones(net, ("first", "last")), callbacks=[snap], seed=0, progress=False)
    saved = {k: v for k, v in snap.epochs[2].items() if not k.endswith(".mask")}
    kept = ls.chain.epoch_state(2)
    assert sorted(kept) == sorted(saved) and any("running_var" in k for k in kept)
    assert all(torch.equal(kept[k], saved[k]) for k in saved)
    for variant in ("WR-IMP", "WR-OMP"):
        start, _, mask = ls.weights[(variant, 2)]
        assert all(torch.equal(start[n], saved[n]) for n in mask)
    wr = ls.table.query("variant == 'WR-IMP'")
    assert (wr.epochs == STEP.epochs - 2).all() and wr.start.eq("θ2").all()


def test_lt_and_rr_share_masks_and_differ_in_initialisation(ma_resnet):
    arch, ls = ma_resnet
    for r in (1, 2):
        for kind in ("IMP", "OMP"):
            (s_lt, _, m_lt), (s_rr, _, m_rr) = ls.weights[(f"LT-{kind}", r)], ls.weights[(f"RR-{kind}", r)]
            assert m_lt == m_rr
            assert all(not torch.equal(s_lt[n], s_rr[n]) for n in m_lt)
            assert all(torch.equal(s_lt[n], ls.chain.init_state[n]) for n in m_lt)
        assert ls.weights[("LT-IMP", r)][2].nonzeros == ls.weights[("LT-OMP", r)][2].nonzeros == ls.chain.mask(r).nonzeros
    assert "conv1.weight" not in ls.chain.mask(1) and "fc.weight" not in ls.chain.mask(1)     # stem and classifier dense


def test_sd_parameter_count_matches_the_ticket(ma_resnet):
    _, ls = ma_resnet
    sd = ls.table.query("variant == 'SD'")
    assert len(sd) == 2 and ((sd.params/sd.target_params - 1).abs() < 0.05).all(), sd[["params", "target_params"]]
    lt = ls.table.query("variant == 'LT-IMP'").set_index("level").params
    assert sd.set_index("level").target_params.to_dict() == lt.to_dict()


def test_omp_is_one_shot_global_magnitude_of_the_trained_dense(ma_resnet):
    _, ls = ma_resnet
    k = ls.chain.mask(2).nonzeros
    assert omp_mask(ls.chain, k) == ref_prune(ls.chain.mask(0), ls.chain.state(0), k)


def test_tail_recipe_continues_the_schedule():
    r = Recipe(schedule="multistep", milestones=(80, 120), epochs=160, lr=0.1)
    for t in (1, 8, 80, 121):
        tail = tail_recipe(r, t)
        assert [lr_at(tail, e) for e in range(tail.epochs)] == pytest.approx([lr_at(r, e) for e in range(t, 160)], rel=1e-12)
    with pytest.raises(ValueError, match="t=160"): tail_recipe(r, 160)


@pytest.mark.parametrize("kw, match", [(dict(rewind_epoch=3), "rewind_epoch=3"), (dict(rewind_epoch=0), "rewind_epoch=0"),
                                       (dict(variants=["WR"]), r"variants=\['WR'\]"), (dict(rr_seed=3), "rr_seed=3")])
def test_lottery_sanity_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        lottery_sanity(arch_for("digits", "lenet-300-100", seed=3), "digits", [0.64], STEP, **kw)


def test_imp_level_and_reinitialised_errors():
    assert [imp_level(0.8**r) for r in range(15)] == list(range(15))
    with pytest.raises(ValueError, match="not an IMP level"): imp_level(0.5)
    arch = arch_for("digits", "lenet-300-100", seed=3)
    tk = Ticket(Mask.ones(get_model(**arch)), get_model(**arch).state_dict(), arch, key="k")
    with pytest.raises(ValueError, match="own seed"): reinitialised(tk, 3)
    rr = reinitialised(tk, 4)
    assert rr.key == "k/rr-4" and rr.arch["seed"] == 4 and rr.mask == tk.mask
