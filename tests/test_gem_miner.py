"""paper_repro.gem_miner: the freezing schedule, exact densities under the bound, the regulariser, the STE-trained
scores, layer collapse, the official-code options, caching, presets against the paper's tables, errors."""
import math
import warnings

import pytest
import torch

from torch import nn

import paper_repro.gem_miner as gem_miner_module
from paper_repro.gem_miner import (GEMS_OPTIONS, REGULARIZERS, Miner, freeze, freezing_bound,
                                   freezing_events, gem_miner, score_regularizer)
from paper_repro.masks import Mask, get_mask, masked_layers, to_masked
from paper_repro.models import get_model
from paper_repro.recipes import TABLE15, TABLE15_NESTEROV, get_recipe, RECIPES
from paper_repro.tickets import arch_for

ARCH = arch_for("digits", "lenet-300-100", seed=0, init="signed_constant", bias=False)
RECIPE = get_recipe("cpu", epochs=6, batch_size=64, lr=0.5, weight_decay=0)


pytestmark = pytest.mark.usefixtures("one_thread", "tmp_outputs")


def curves(ticket):
    return ticket.history.query("split == 'train'").pivot_table(index="epoch", columns="metric", values="value")


@pytest.mark.parametrize("epochs,period", [(150, 5), (300, 5), (20, 2), (12, 4), (7, 3)])
@pytest.mark.parametrize("density", [0.5, 0.05, 0.014, 0.005])
def test_paper_events_end_at_the_target(epochs, period, density):
    """Events at j = T, 2T, ... <= E leave e^{-cj}; the sign of Algorithm 1's e^{cT} is a typo: each event keeps
    e^{-cT} of the active entries."""
    ev = freezing_events(epochs, period, density)
    assert list(ev) == list(range(period, epochs + 1, period))
    c = math.log(1 / density) / epochs
    for j, f in ev.items():
        assert f == pytest.approx(math.exp(-c * j), rel=1e-12) and f == pytest.approx(freezing_bound(j, epochs, density))
    js = list(ev)
    for a, b in zip(js, js[1:]):
        assert ev[b] / ev[a] == pytest.approx(math.exp(-c * period), rel=1e-9)
    if epochs % period == 0:
        assert ev[epochs] == pytest.approx(density, rel=1e-12)


def test_official_events():
    """N = floor((E-1)/T) events after 1-based epochs T+1, 2T+1, ..., each keeping d^{1/N} of the active."""
    ev = freezing_events(150, 5, 0.0144, "official")
    assert list(ev) == [5 * k + 1 for k in range(1, 30)]
    assert ev[146] == pytest.approx(0.0144) and ev[6] == pytest.approx(0.0144 ** (1 / 29))


def test_no_target_no_events():
    assert freezing_events(20, 2, None) == {}


def test_freeze_keeps_exactly_the_largest_active_scores():
    model = to_masked(get_model(**ARCH), rule="round", seed=3)
    layers = masked_layers(model)
    p = torch.cat([l.scores.detach().flatten() for l in layers.values()])
    total = p.numel()
    for keep in (total // 2, 1000, 37, 0):
        before = torch.cat([l.mask.flatten() for l in layers.values()]).bool()
        freeze(model, keep)
        q = torch.cat([l.mask.flatten() for l in layers.values()]).bool()
        assert int(q.sum()) == keep and not (q & ~before).any()
        if keep and (before & ~q).any():
            assert p[q].min() >= p[before & ~q].max()
    with pytest.raises(ValueError, match="keep=5"):
        freeze(model, 5)


def test_freeze_ties_keep_exact_count():
    model = to_masked(get_model(**ARCH), rule="round", scores={n: torch.ones(w.shape) for n, w in
                      [(n, l.weight) for n, l in masked_layers(to_masked(get_model(**ARCH), rule="round")).items()]})
    freeze(model, 1234)
    assert sum(int(l.mask.sum()) for l in masked_layers(model).values()) == 1234


@pytest.mark.parametrize("density", [0.5, 0.05, 0.014, 0.005])
def test_final_density_is_the_target_and_the_bound_holds(density):
    """lam = 0: the final mask r(p) ⊙ q keeps the target's weights up to one weight per freezing event, and after every
    event the frozen density is at or below the bound."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = gem_miner(ARCH, "digits", density, 0.0, RECIPE, period=2, cache=False, progress=False)
    total = t.mask.size
    events = freezing_events(RECIPE.epochs, 2, density)
    assert abs(t.mask.nonzeros - density * total) <= len(events)
    c = curves(t)
    for j in events:
        assert c.loc[j, "frozen_density"] <= freezing_bound(j, RECIPE.epochs, density) + 1e-12
        assert c.loc[j, "bound"] == pytest.approx(freezing_bound(j, RECIPE.epochs, density))
    assert Mask(t.extras["frozen"]).density <= density + 1e-12
    # the mask is r(p) ⊙ q, built from the stored scores and q
    assert t.mask == Mask(t.extras["frozen"]) & Mask({n: s > 0.5 for n, s in t.extras["scores"].items()})


def test_scores_stay_in_unit_interval_and_weights_frozen():
    t = gem_miner(ARCH, "digits", 0.1, 1e-4, RECIPE, period=2, cache=False, progress=False)
    init = get_model(**ARCH).state_dict()
    for n, s in t.extras["scores"].items():
        assert 0 <= s.min() and s.max() <= 1
    for n, w in t.weights.items():
        if n.endswith("weight"):
            assert torch.equal(w, init[n]), n      # the weights never train


def test_gm0_has_no_freezing_and_settles_by_itself():
    t = gem_miner(ARCH, "digits", None, 0.0, RECIPE, period=2, cache=False, progress=False)
    c = curves(t)
    assert "bound" not in c.columns and (c.frozen_density == 1.0).all()
    assert 0.3 < t.density < 0.7


def test_regularizers():
    model = to_masked(get_model(**ARCH), rule="round", seed=0)
    p = [l.scores for l in masked_layers(model).values()]
    assert score_regularizer(2e-3, "L2")(model).item() == pytest.approx(2e-3 * sum((x ** 2).sum().item() for x in p), rel=1e-5)
    assert score_regularizer(2e-3, "L1")(model).item() == pytest.approx(2e-3 * sum(x.abs().sum().item() for x in p), rel=1e-5)
    assert set(REGULARIZERS) == {"L1", "L2"}


def test_larger_lam_is_sparser():
    d = [gem_miner(ARCH, "digits", None, lam, RECIPE, period=2, cache=False, progress=False).density for lam in (0.0, 1e-4, 1e-3)]
    assert d[0] > d[1] > d[2]


def test_unflag_gives_q_and_invert_keeps_small_scores():
    a = gem_miner(ARCH, "digits", 0.05, 1e-4, RECIPE, period=2, unflag=True, cache=False, progress=False)
    assert a.mask == Mask(a.extras["frozen"])
    with pytest.warns(UserWarning, match="layer collapse"):   # keeping the smallest scores: r(p) ⊙ q empties
        b = gem_miner(ARCH, "digits", 0.05, 0.0, RECIPE, period=2, invert=True, unflag=True, cache=False, progress=False)
    q = Mask(b.extras["frozen"])
    assert q.density == pytest.approx(math.floor(0.05 * q.size) / q.size)


def test_inverted_freezing_keeps_the_smallest_active_scores_by_hand():
    """Score inversion at mining time (Rare Gems section 4; the authors' --invert-sanity-check): on a two-layer model
    with ten distinct scores, redrawn before each of three events as training would move them and with the frozen
    entries given the very smallest scores, each event keeps exactly the k smallest scores of the entries active
    before it (sorted by hand), and no frozen entry comes back."""
    model = to_masked(nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False)), rule="round", seed=0)
    layers = list(masked_layers(model).values())
    flat = lambda attr: torch.cat([getattr(l, attr).detach().flatten() for l in layers])
    g = torch.Generator().manual_seed(1)
    for keep in (7, 4, 2, 1):
        before = flat("mask").bool()
        v = 0.05 + 0.9 * torch.randperm(10, generator=g).float() / 10
        v[~before] = torch.linspace(0, 0.01, int((~before).sum()))
        with torch.no_grad():
            for l, part in zip(layers, torch.split(v, [l.scores.numel() for l in layers])):
                l.scores.copy_(part.view_as(l.scores))
        assert freeze(model, keep, invert=True) == int(before.sum()) - keep
        after = flat("mask").bool()
        by_hand = sorted((i for i in range(10) if before[i]), key=lambda i: float(v[i]))[:keep]
        assert sorted(torch.nonzero(after).flatten().tolist()) == sorted(by_hand)
        assert not (after & ~before).any()


def test_mining_time_inversion_keeps_the_lowest_scores_of_the_not_yet_frozen(monkeypatch):
    """gem_miner(invert=True) on LeNet-300-100 (digits), every freezing event recorded: the entries kept are the k
    smallest scores among those active before the event (k from the schedule; ties either way), frozen entries never
    return, and the final q is the last event's."""
    real, events = gem_miner_module.freeze, []

    def spy(model, keep, invert=False, member=None):
        layers = list(masked_layers(model).values())
        q = lambda: torch.cat([l.mask.detach().flatten() for l in layers]).bool()
        before, p = q(), torch.cat([l.scores.detach().flatten() for l in layers]).clone()
        frozen = real(model, keep, invert=invert, member=member)
        assert member is None                              # one run, not a stack
        events.append(dict(invert=invert, keep=keep, before=before, p=p, after=q(), frozen=frozen))
        return frozen

    monkeypatch.setattr(gem_miner_module, "freeze", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # r(p) ⊙ q collapses when the lowest scores are kept: expected
        t = gem_miner(ARCH, "digits", 0.05, 1e-4, RECIPE, period=2, invert=True, unflag=True, cache=False, progress=False)
    schedule = freezing_events(RECIPE.epochs, 2, 0.05)
    assert len(events) == len(schedule) and all(e["invert"] for e in events)
    total = events[0]["before"].numel()
    for e, frac in zip(events, schedule.values()):
        kept, dropped = e["after"], e["before"] & ~e["after"]
        assert e["keep"] == math.floor(frac * total) and int(kept.sum()) == e["keep"]
        assert not (kept & ~e["before"]).any()                          # frozen entries never come back
        assert dropped.any() and e["p"][kept].max() <= e["p"][dropped].min()   # the lowest active scores stay
        assert e["frozen"] == int(dropped.sum())
    for a, b in zip(events, events[1:]):
        assert torch.equal(b["before"], a["after"])                     # nothing revived between events
    q = torch.cat([t.extras["frozen"][n].flatten() for n in t.extras["frozen"]]).bool()
    assert torch.equal(q, events[-1]["after"]) and t.mask == Mask(t.extras["frozen"])   # unflag: the mask is q


def test_layer_collapse_is_recorded_and_warned():
    """A regulariser far too strong pushes every score under 1/2: collapse is counted, listed and warned about."""
    with pytest.warns(UserWarning, match="layer collapse"):
        t = gem_miner(ARCH, "digits", None, 1.0, RECIPE, period=2, cache=False, progress=False)
    assert t.info["collapsed"] and t.info["collapse_epoch"] is not None
    assert curves(t).collapsed.max() >= 1


def test_cached_run_loads_and_finetunes_from_cache():
    from paper_repro.runs import STATS
    from paper_repro.tickets import finetune
    a = gem_miner(ARCH, "digits", 0.1, 1e-4, RECIPE, period=2, progress=False)
    hits = STATS["hits"]
    b = gem_miner(ARCH, "digits", 0.1, 1e-4, RECIPE, period=2, progress=False)
    assert STATS["hits"] == hits + 1 and a.key == b.key and a.mask == b.mask
    assert all(torch.equal(a.extras["scores"][n], b.extras["scores"][n]) for n in a.extras["scores"])
    tune = get_recipe("cpu", epochs=1, batch_size=64)
    n1, h1 = finetune(b, "digits", tune, progress=False)
    n2, h2 = finetune(b, "digits", tune, progress=False)
    assert STATS["hits"] == hits + 2 and h1.equals(h2)
    assert Mask.from_weights(n1) & b.mask == Mask.from_weights(n1)


def test_presets_match_the_tables():
    """Table 15's recipes (Figure 3's presets, which use them, are `gems.Fig3Spec`: tests/test_gems.py)."""
    r = RECIPES["gems-finetune-mobilenet-v2"]
    assert (r.epochs, r.batch_size, r.lr, r.milestones, r.weight_decay) == (300, 128, 0.1, (150, 250), 1e-4)
    assert RECIPES["gems-finetune-resnet20"].lr == 0.01 and RECIPES["gems-finetune-resnet20-50%"].lr == 0.1
    assert TABLE15["vgg16-gems"] == (200, 128, 0.05, (100, 150))
    assert GEMS_OPTIONS == dict(init="signed_constant", bias=False, affine_bn=False)   # the authors' builder


def test_nesterov_only_for_resnet50_tiny_imagenet():
    """Table 13's note, "We also use nesterov momentum for finetuning", is for ResNet-50 on Tiny-ImageNet alone."""
    assert TABLE15_NESTEROV == ("resnet50-tiny-imagenet",)
    for name in TABLE15:
        r = RECIPES[f"gems-finetune-{name}"]
        assert r.nesterov == (name == "resnet50-tiny-imagenet"), name
        assert (r.optimizer, r.momentum, r.weight_decay) == ("sgd", 0.9, 1e-4)
    assert TABLE15["resnet50-tiny-imagenet"] == (150, 256, 0.1, (80, 120))


@pytest.mark.parametrize("kw,words", [
    (dict(density=0.0), "density=0.0"), (dict(density=1.5), "density=1.5"), (dict(density=-0.1), "density=-0.1"),
    (dict(lam=-1e-6), "lam=-1e-06"), (dict(lam=float("nan")), "lam=nan"), (dict(period=0), "period=0"),
    (dict(period=7), "period=7"), (dict(period=2.5), "period=2.5"), (dict(regularizer="L3"), "regularizer='L3'"),
    (dict(events="often"), "events='often'"),
])
def test_bad_input(kw, words):
    args = {**dict(density=0.1, lam=0.0, period=2), **kw}
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        gem_miner(ARCH, "digits", args.pop("density"), args.pop("lam"), RECIPE, cache=False, progress=False, **args)


def test_arch_without_a_seed_is_refused():
    """A seedless arch would draw new weights on every call under one cache key."""
    with pytest.raises(ValueError, match=r"arch\['seed'\]=None"):
        gem_miner(arch_for("digits", "lenet-300-100"), "digits", 0.1, 0.0, RECIPE, period=2, progress=False)
    with pytest.raises(ValueError, match="arch_for"):
        gem_miner("lenet-300-100", "digits", 0.1, 0.0, RECIPE, period=2, progress=False)
