"""paper_repro.masks: exact counts and ties, the Mask value type, random masks and shuffles, masked layers through
training, the straight-through estimator, conversions and round trips, the optimizer hook, bad input."""
import copy
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from paper_repro.masks import (RULES, Mask, MaskedConv2d, MaskedLayer, MaskedLinear, ScoredConv2d, ScoredLinear,
                               apply_mask, enforce_masks, fixed_masks, get_mask, keep_count, keep_masks, magnitude,
                               masked_layers, random_mask, shuffle, to_masked, to_plain, top_count)
from paper_repro.models import get_model, prunable_weights, same_state


pytestmark = pytest.mark.usefixtures("one_thread")


def lenet(seed=0):
    return get_model("lenet-300-100", in_channels=1, input_size=28, seed=seed)


def resnet(seed=0):
    return get_model("resnet20", width=0.25, seed=seed)


def tiny(seed=0):
    "Two convs (one strided, one grouped) and a linear layer, on 1x8x8 inputs."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, groups=2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 10))


INPUT = {lenet: (1, 28), resnet: (3, 32), tiny: (1, 8)}


def batch(build, n=4, seed=0):
    c, side = INPUT[build]
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))


def half_up(n, d):
    "⌊d·n + ½⌋ in decimal arithmetic on the density as written: the count a reader computes by hand."
    return min(n, int((Decimal(repr(d)) * n).to_integral_value(ROUND_HALF_UP)))


def ref_top(scores, k):
    "Reference: the k largest of a flat tensor by a stable full sort of -score (ties: lower flat index first)."
    order = torch.sort(-scores.flatten(), stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return keep.view(scores.shape)


def ref_magnitude(mask, weights, k):
    "Reference global magnitude pruning: pruned entries rank below everything, then a stable sort over the concatenation."
    flat = torch.cat([torch.where(mask[n], weights[n].abs(), torch.tensor(-float("inf"))).flatten() for n in mask])
    keep = ref_top(flat, k).split([mask[n].numel() for n in mask])
    return {n: t.view(mask[n].shape) for n, t in zip(mask, keep)}


def tied_weights(model):
    "The prunable weights rounded to a coarse grid, so that many magnitudes tie (name -> tensor)."
    return {n: (w.detach() * 20).round() / 20 for n, w in prunable_weights(model).items()}


def subset(a, b):
    return all(not (a[n] & ~b[n]).any() for n in a)


# ---------------------------------------------------------------- 1. exact counts, ties, magnitude pruning

@pytest.mark.parametrize("n,d,expected", [
    (10, 1, 10), (10, 0.5, 5), (10, 0.25, 3), (10, 0.05, 1), (10, 0.04, 0), (3, 0.5, 2), (1, 0.5, 1), (1, 0.49, 0),
    (100, 0.125, 13), (1000, 0.0015, 2), (266_200, 0.05, 13_310), (7, 1.0, 7),
    (50, 0.29, 15), (45, 0.7, 32), (25, 0.58, 15),  # d·n is exactly a half by hand: 14.5, 31.5, 14.5 -> halves up
])
def test_keep_count_by_hand(n, d, expected):
    """⌊d·n + ½⌋, nearest with halves up, as documented."""
    assert keep_count(n, d) == expected


def test_keep_count_on_exactly_representable_densities():
    """For d = i/64 (exact in binary), ⌊d·n + ½⌋ = ⌊(2·n·i + 64) / 128⌋ in integer arithmetic."""
    for i in range(1, 65):
        for n in range(0, 200):
            assert keep_count(n, i / 64) == (2 * n * i + 64) // 128, (n, i)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [0, 1, 7, 50, 99, 100])
def test_top_count_matches_a_stable_full_sort(seed, k):
    v = torch.randint(-3, 4, (10, 10), generator=torch.Generator().manual_seed(seed)).float()  # many ties
    got = top_count(v, k)
    assert got.shape == v.shape and got.dtype == torch.bool and int(got.sum()) == k
    assert torch.equal(got, ref_top(v, k))


@pytest.mark.parametrize("density", [0.5, 0.1, 0.013, 0.001])
@pytest.mark.parametrize("start", ["ones", "random"])
def test_global_magnitude_density_exact_count_and_reference(density, start):
    net = lenet()
    w = tied_weights(net)
    mask = Mask.ones(net) if start == "ones" else random_mask(net, 0.6, seed=3)
    got = magnitude(mask, w, density=density)
    assert got.nonzeros == keep_count(mask.size, density)
    assert subset(got, mask)
    ref = ref_magnitude(mask, w, keep_count(mask.size, density))
    for n in mask:
        assert torch.equal(got[n], ref[n]), n


@pytest.mark.parametrize("density", [0.5, 0.2, 0.013])
def test_layerwise_magnitude_density_exact_count_per_layer(density):
    net = lenet()
    w = tied_weights(net)
    mask = random_mask(net, 0.7, seed=1)
    got = mask.magnitude(w, density=density, layerwise=True)
    assert list(got) == list(mask)
    for n in mask:
        k = keep_count(mask[n].numel(), density)
        assert int(got[n].sum()) == k, n
        masked = torch.where(mask[n], w[n].abs(), torch.tensor(-float("inf")))
        assert torch.equal(got[n], ref_top(masked, k)), n
    assert subset(got, mask)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.25, 0.5, 0.1])
@pytest.mark.parametrize("layerwise", [False, True])
def test_magnitude_fraction_prunes_of_the_remaining(fraction, layerwise):
    """fraction=f removes ⌊f·remaining + ½⌋ of the remaining weights (globally, or in each layer)."""
    net = lenet()
    w = tied_weights(net)
    mask = random_mask(net, [0.55, 0.3, 0.45], seed=2)
    got = magnitude(mask, w, fraction=fraction, layerwise=layerwise)
    assert subset(got, mask)
    if layerwise:
        for n in mask:
            remaining = int(mask[n].sum())
            k = remaining - half_up(remaining, fraction)
            assert int(got[n].sum()) == k, n
            assert torch.equal(got[n], ref_top(torch.where(mask[n], w[n].abs(), torch.tensor(-float("inf"))), k)), n
    else:
        k = mask.nonzeros - half_up(mask.nonzeros, fraction)
        assert got.nonzeros == k
        ref = ref_magnitude(mask, w, k)
        assert all(torch.equal(got[n], ref[n]) for n in mask)


def test_imp_rounds_of_twenty_percent_land_on_the_schedule():
    net = lenet()
    m, remaining = Mask.ones(net), Mask.ones(net).size
    for _ in range(6):
        nxt = m.magnitude(net, fraction=0.2)
        remaining -= half_up(remaining, 0.2)
        assert nxt.nonzeros == remaining
        assert (nxt & m) == nxt
        m = nxt


def test_all_ties_keep_exactly_the_count_at_the_lowest_indices():
    w = {"a": torch.full((4, 5), 0.3), "b": torch.full((7,), -0.3)}
    ones = Mask({n: torch.ones_like(t) for n, t in w.items()})
    g = ones.magnitude(w, density=0.5)  # ⌊13.5 + ½⌋ = 14 of 27: the first 14 flat entries, all in "a"
    assert torch.equal(g["a"].flatten(), torch.arange(20) < 14) and not g["b"].any()
    lw = ones.magnitude(w, density=0.5, layerwise=True)  # 10 of 20 in "a", ⌊3.5 + ½⌋ = 4 of 7 in "b"
    assert torch.equal(lw["a"].flatten(), torch.arange(20) < 10)
    assert torch.equal(lw["b"], torch.arange(7) < 4)
    holes = Mask({"a": torch.arange(20).view(4, 5) % 3 != 0, "b": torch.ones(7)})  # "a" loses 0, 3, 6, ...
    h = holes.magnitude(w, density=0.25)  # ⌊6.75 + ½⌋ = 7: the 7 lowest indices the mask still keeps
    kept_a = [i for i in range(20) if i % 3 != 0][:7]
    assert h["a"].flatten().nonzero().flatten().tolist() == kept_a and not h["b"].any()


def test_magnitude_never_keeps_a_pruned_weight_however_large():
    net = lenet()
    w = {n: p.detach().clone() for n, p in prunable_weights(net).items()}
    biggest = Mask.ones(net).magnitude(w, density=0.3)
    kept = {n: ~t for n, t in biggest.items()}  # prune exactly the largest 30%
    w["fc.weight"][0, :5] = 0.0  # kept weights that are exactly zero still rank above every pruned weight
    kept["fc.weight"][0, :5] = True
    mask = Mask(kept)
    for target in (dict(density=0.2), dict(density=0.01), dict(fraction=0.5), dict(density=0.05, layerwise=True)):
        got = mask.magnitude(w, **target)
        assert subset(got, mask), target
        assert not any((got[n] & biggest[n] & ~mask[n]).any() for n in got), target
    assert mask.magnitude(w, fraction=0.0) == mask  # keeping all the remaining keeps exactly the mask, zeros included
    assert mask.magnitude(w, density=mask.nonzeros / mask.size) == mask


def test_magnitude_cannot_add_weights():
    net = lenet()
    mask = random_mask(net, 0.1, seed=0)
    with pytest.raises(ValueError, match="remain"):
        mask.magnitude(net, density=0.2)
    with pytest.raises(ValueError, match="remain"):
        mask.magnitude(net, density=0.2, layerwise=True)


def test_magnitude_on_a_scored_model_ranks_the_effective_weights():
    net = to_masked(lenet(), rule="topk", density=0.1, seed=0)
    current = get_mask(net)
    got = Mask.ones(net).magnitude(net, density=0.05)
    assert got.nonzeros == keep_count(current.size, 0.05)
    assert subset(got, current)  # pruned effective weights are 0 and every kept one is non-zero


# ---------------------------------------------------------------- 2. random masks and shuffles

@pytest.mark.parametrize("densities", [
    0.1, 1, [0.5, 0.1, 0.013], (0.05, 1.0, 0.3),
    {"hidden.0.weight": 0.02, "hidden.1.weight": 0.5, "fc.weight": 0.0015},
])
def test_random_mask_exact_per_layer_counts(densities):
    net = lenet()
    m = random_mask(net, densities, seed=4)
    names = list(prunable_weights(net))
    assert list(m) == names
    if isinstance(densities, dict):
        ds = [densities[n] for n in names]
    elif isinstance(densities, (list, tuple)):
        ds = list(densities)
    else:
        ds = [densities] * len(names)
    for (n, w), d in zip(prunable_weights(net).items(), ds):
        assert m[n].shape == w.shape and m[n].dtype == torch.bool
        assert int(m[n].sum()) == keep_count(w.numel(), d), n


def test_random_mask_from_shapes_tensors_and_masks():
    shapes = {"a": (3, 4), "b": torch.empty(5, 2, 2)}
    m = random_mask(shapes, 0.5, seed=0)
    assert m["a"].shape == (3, 4) and m["b"].shape == (5, 2, 2)
    assert [int(m[n].sum()) for n in m] == [6, 10]
    again = random_mask(m, 0.25, seed=0)  # a Mask gives its shapes
    assert [int(again[n].sum()) for n in again] == [3, 5]


def test_random_mask_exclude():
    net = resnet()
    names = list(prunable_weights(net))
    m = random_mask(net, 0.3, seed=0, exclude=("first", "last"))
    assert list(m) == names[1:-1]


def test_random_mask_same_seed_same_mask_different_seed_different():
    net = lenet()
    a, b, c = (random_mask(net, 0.2, seed=s) for s in (7, 7, 8))
    assert a == b
    assert a != c
    for n in a:
        assert not torch.equal(a[n], c[n]), n  # every layer is redrawn, not just some
    assert random_mask(net, 0.2, seed=torch.Generator().manual_seed(7)) == a


def test_random_mask_positions_are_spread_uniformly():
    m = random_mask({"w": (100, 1000)}, 0.3, seed=0)["w"]
    per_row = m.sum(1).float()  # hypergeometric, mean 300, sd < 14.5
    assert abs(per_row.mean().item() - 300) < 1e-4
    assert per_row.min() > 300 - 6 * 14.5 and per_row.max() < 300 + 6 * 14.5
    per_col = m.sum(0).float()  # 100 rows each: mean 30, sd about 4.6
    assert 3.5 < per_col.std() < 6


def test_shuffle_keeps_counts_changes_positions_and_is_seeded():
    net = lenet()
    m = random_mask(net, [0.5, 0.1, 0.013], seed=1)
    before = {n: t.clone() for n, t in m.items()}
    s = shuffle(m, seed=3)
    assert list(s) == list(m)
    for n in m:
        assert int(s[n].sum()) == int(m[n].sum()) and s[n].shape == m[n].shape, n
        assert not torch.equal(s[n], m[n]), n
        assert torch.equal(m[n], before[n]), n  # the input is untouched
    assert m.shuffle(seed=3) == s
    assert m.shuffle(seed=4) != s


# ---------------------------------------------------------------- 3. the Mask value type

def test_size_nonzeros_density_by_hand():
    m = Mask({"a": torch.tensor([[1, 0], [1, 1]]), "b": torch.tensor([0.0, 0.0, 1.0])})
    assert all(t.dtype == torch.bool for t in m.values())
    assert (m.size, m.nonzeros) == (7, 4)
    assert m.density == pytest.approx(4 / 7)
    assert len(m) == 2 and list(m) == ["a", "b"]


def test_layer_density_columns_and_values():
    m = Mask({"a": torch.tensor([[1, 0], [1, 1]]), "b": torch.zeros(3), "c": torch.ones(2, 5)})
    df = m.layer_density()
    assert list(df.columns) == ["layer", "size", "kept", "density"]
    assert df.layer.tolist() == ["a", "b", "c"]
    assert df["size"].tolist() == [4, 3, 10]
    assert df.kept.tolist() == [3, 0, 10]
    assert df.density.tolist() == pytest.approx([0.75, 0.0, 1.0])
    assert m.collapsed() == ["b"]


def test_layer_density_agrees_with_the_tensors_on_a_model():
    m = random_mask(resnet(), 0.07, seed=2)
    df = m.layer_density()
    assert df["size"].sum() == m.size and df.kept.sum() == m.nonzeros
    for row in df.itertuples():
        assert row.size == m[row.layer].numel() and row.kept == int(m[row.layer].sum())


def test_intersection_is_elementwise_and():
    net = lenet()
    a, b = random_mask(net, 0.5, seed=0), random_mask(net, 0.3, seed=1)
    a0 = {n: t.clone() for n, t in a.items()}
    c = a & b
    assert list(c) == list(a)
    for n in a:
        assert torch.equal(c[n], torch.logical_and(a[n], b[n])), n
        assert torch.equal(a[n], a0[n]), n  # operands untouched
    assert c == (b & a) == a.intersection(b)
    assert c.nonzeros == sum(int((a[n] & b[n]).sum()) for n in a)


def test_intersection_of_masks_over_different_tensors_or_shapes():
    net = lenet()
    with pytest.raises(ValueError, match="hidden.0.weight"):
        Mask.ones(net) & Mask.ones(net, exclude="first")
    other = dict(Mask.ones(net))
    other["fc.weight"] = torch.ones(10, 99, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"fc\.weight") as e:
        Mask.ones(net) & Mask(other)
    assert "(10, 100)" in str(e.value) and "(10, 99)" in str(e.value)


def test_equality():
    net = lenet()
    a = random_mask(net, 0.2, seed=0)
    b = Mask({n: t.clone() for n, t in a.items()})
    assert a == b and not (a != b)
    flipped = {n: t.clone() for n, t in a.items()}
    flipped["fc.weight"][3, 7] = ~flipped["fc.weight"][3, 7]
    assert a != Mask(flipped)
    assert a != Mask({n: t for n, t in a.items() if n != "fc.weight"})
    assert a != Mask({**{n: t for n, t in a.items()}, "fc.weight": a["fc.weight"].flatten()})


def test_state_dict_round_trips_through_a_weights_only_load(tmp_path):
    m = random_mask(resnet(), 0.1, seed=5)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert list(loaded) == list(m)
    assert Mask(loaded) == m


def test_ones_with_exclude_first_and_last():
    net = resnet()
    names = list(prunable_weights(net))
    m = Mask.ones(net, exclude=("first", "last"))
    assert list(m) == names[1:-1]
    assert m.nonzeros == m.size == sum(p.numel() for n, p in prunable_weights(net).items() if n in names[1:-1])
    assert list(Mask.ones(net)) == names


def test_from_weights_after_apply_mask_is_the_mask():
    net = lenet()
    mask = random_mask(net, 0.1, seed=0)
    apply_mask(net, mask)
    assert Mask.from_weights(net) == mask
    assert list(Mask.from_weights(net, exclude="last")) == list(mask)[:-1]
    assert Mask.from_weights({n: p.detach() for n, p in prunable_weights(net).items()}) == mask


# ---------------------------------------------------------------- 4. masked layers through training

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=5e-4),
}


def train(model, opt, build, steps=200, seed=0, every=None):
    g = torch.Generator().manual_seed(seed)
    c, side = INPUT[build]
    for _ in range(steps):
        x, y = torch.randn(16, c, side, side, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if every: every()
        opt.step()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("build", [tiny, lenet], ids=["tiny", "lenet"])
def test_fixed_mask_survives_training(build, opt_name):
    """200 steps: every pruned weight stays exactly 0 although it gets gradients; the density is unchanged."""
    model = build()
    mask = random_mask(model, 0.3 if build is tiny else 0.05, seed=1)
    apply_mask(model, mask)
    assert all(type(l) in (MaskedConv2d, MaskedLinear) for l in masked_layers(model).values())
    opt = OPTIMIZERS[opt_name](model.parameters())
    keep_masks(opt, model)
    weights = prunable_weights(model)
    revivable = []
    train(model, opt, build, every=lambda: revivable.append(any(bool((weights[n].grad[~mask[n]] != 0).any())
                                                                   for n in mask)))
    assert all(revivable)  # the pruned weights received gradients at every step: the hook had work to do
    for n in mask:
        assert (weights[n][~mask[n]] == 0).all(), n
    assert get_mask(model) == mask
    assert Mask.from_weights(model) == mask  # nothing pruned revived, nothing kept died
    assert Mask.from_weights(model).density == mask.density


def _scored(build, rule, q_density=0.6):
    model = build()
    q = random_mask(model, q_density, seed=2)
    kw = dict(density=0.3) if rule == "topk" else {}
    to_masked(model, q, rule=rule, seed=0, **kw)
    return model, q


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("rule,q_density", [("round", 0.6), ("topk", 0.6), ("topk", 1.0)])
def test_scored_masks_survive_training(rule, q_density, opt_name):
    """Weights and scores trained together: frozen entries stay out, pruned effective weights are exactly 0, round
    scores stay in [0, 1], topk keeps the top keep_count(n, d) of |s| (times q)."""
    model, q = _scored(tiny, rule, q_density)
    assert all(type(l) in (ScoredConv2d, ScoredLinear) for l in masked_layers(model).values())
    layers = masked_layers(model)
    scores0 = {n: l.scores.detach().clone() for n, l in layers.items()}
    opt = OPTIMIZERS[opt_name](model.parameters())
    keep_masks(opt, model)
    frozen_grads = []
    train(model, opt, tiny, every=lambda: frozen_grads.append(
        sum(float(l.scores.grad[~q[n]].abs().sum()) for n, l in layers.items())))
    assert max(frozen_grads) == 0
    cur = get_mask(model)
    assert subset(cur, q)
    for n, l in layers.items():
        assert not torch.equal(l.scores, scores0[n]), n  # the scores did train
        assert (l.effective_weight()[~cur[n]] == 0).all(), n
        if rule == "round":
            assert 0 <= l.scores.min() and l.scores.max() <= 1, n
            assert torch.equal(cur[n], (l.scores > 0.5) & q[n]), n
        else:
            k = keep_count(l.weight.numel(), 0.3)
            assert torch.equal(cur[n], ref_top(l.scores.detach().abs(), k) & q[n]), n
            if q_density == 1.0:
                assert int(cur[n].sum()) == k, n
    plain = to_plain(copy.deepcopy(model))
    for n, w in prunable_weights(plain).items():
        assert (w[~cur[n]] == 0).all(), n


def test_round_scores_are_projected_onto_the_bounds():
    model, q = _scored(tiny, "round")
    opt = torch.optim.SGD([l.scores for l in masked_layers(model).values()], lr=50.0)
    keep_masks(opt, model)
    train(model, opt, tiny, steps=20)
    s = torch.cat([l.scores.detach().flatten() for l in masked_layers(model).values()])
    assert s.min() >= 0 and s.max() <= 1
    assert (s == 0).any() and (s == 1).any()  # a large learning rate pushed scores past both bounds: clamped


@pytest.mark.parametrize("rule", ["round", "topk"])
def test_frozen_entries_stay_out_however_high_their_scores(rule):
    model, q = _scored(tiny, rule, q_density=0.8)
    for n, l in masked_layers(model).items():
        with torch.no_grad():
            l.scores.copy_(torch.where(q[n], torch.full_like(l.scores, 0.7), torch.full_like(l.scores, 0.99)))
    cur = get_mask(model)
    assert subset(cur, q)
    if rule == "round":
        assert cur == q  # every q-entry has score 0.7 > 0.5
    else:  # the top-k |s| include every frozen entry (0.99 > 0.7); they drop out, the rest of the k are kept
        for n, t in q.items():
            assert int(cur[n].sum()) == keep_count(t.numel(), 0.3) - int((~t).sum()) > 0, n
    F.cross_entropy(model(batch(tiny)), torch.arange(4)).backward()
    for n, l in masked_layers(model).items():
        assert (l.scores.grad[~q[n]] == 0).all(), n
        assert (l.scores.grad[q[n]] != 0).any(), n


def _counts(model, density):
    return {n: keep_count(w.numel(), density) for n, w in prunable_weights(model).items()}


@pytest.mark.parametrize("density", [0.5, 0.05, 0.01, 0.0075, 0.004, 0.001])
@pytest.mark.parametrize("build", [resnet, lenet], ids=["resnet20", "lenet"])
def test_topk_keeps_keep_count_per_layer(build, density):
    """Exactly keep_count(n, d) per layer, also when it rounds to 1; a density that would leave some layer with 0
    is refused before any layer changes (naming the layer), since the network would be cut."""
    model = build()
    counts = _counts(model, density)
    if 0 in counts.values():
        empty = next(n for n, k in counts.items() if k == 0)
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(ValueError, match=re.escape(repr(empty))):
            to_masked(model, rule="topk", density=density, scores="kaiming_uniform", seed=0)
        assert not masked_layers(model) and set(model.state_dict()) == set(before)   # nothing converted
        return
    model = to_masked(model, rule="topk", density=density, scores="kaiming_uniform", seed=0)
    cur = get_mask(model)
    for n, l in masked_layers(model).items():
        assert int(cur[n].sum()) == counts[n] == l.keep, n
        assert torch.equal(cur[n], ref_top(l.scores.detach().abs(), counts[n])), n  # the largest |s|
    assert cur.collapsed() == []
    with torch.no_grad():
        assert torch.isfinite(model.eval()(batch(build))).all()


def test_topk_densities_reach_zero_and_one_kept():
    """The densities above do exercise the rounding edge: some layer keeps 1 (accepted), some keeps 0 (refused)."""
    counts = [k for d in (0.0075, 0.004, 0.001) for k in _counts(resnet(), d).values()]
    assert 0 in counts and 1 in counts


@pytest.mark.parametrize("build", [resnet, lenet], ids=["resnet20", "lenet"])
def test_topk_keeps_one_in_the_smallest_layer(build):
    """At density 1/n of the smallest layer, that layer keeps exactly 1 weight (the largest |s|) and none is empty."""
    model = build()
    n_min = min(w.numel() for w in prunable_weights(model).values())
    counts = _counts(model, 1 / n_min)
    assert min(counts.values()) == 1
    model = to_masked(model, rule="topk", density=1 / n_min, scores="kaiming_uniform", seed=0)
    cur = get_mask(model)
    for n, l in masked_layers(model).items():
        assert int(cur[n].sum()) == counts[n], n
        assert torch.equal(cur[n], ref_top(l.scores.detach().abs(), counts[n])), n


def test_enforce_masks_once():
    model = to_masked(tiny(), {"0.weight": random_mask(tiny(), 0.5, seed=0)["0.weight"]}, rule="round")
    mask = random_mask({"2.weight": (6, 2, 3, 3), "5.weight": (10, 54)}, 0.4, seed=1)
    apply_mask(model, mask)
    with torch.no_grad():
        for p in prunable_weights(model).values(): p.fill_(1.0)
        model[0].scores.mul_(10).sub_(5)
    enforce_masks(model)
    for n in mask:
        assert torch.equal(prunable_weights(model)[n].detach(), mask[n].float()), n
    assert model[0].scores.min() >= 0 and model[0].scores.max() <= 1
    assert (model[0].weight == 1).all()  # scored layers keep their raw weights


def test_fixed_masks_lists_exactly_the_fixed_layers():
    model = to_masked(tiny(), {"0.weight": torch.ones(4, 1, 3, 3)}, rule="round")
    apply_mask(model, random_mask({"2.weight": (6, 2, 3, 3), "5.weight": (10, 54)}, 0.4, seed=1))
    fm = fixed_masks(model)
    assert [id(w) for w in fm] == [id(model[2].weight), id(model[5].weight)]
    assert all(fm[l.weight] is l.mask for l in (model[2], model[5]))


def test_apply_mask_again_updates_the_hooked_optimizer():
    """An IMP round: a new mask on an already hooked model is enforced by the existing hook."""
    model = apply_mask(tiny(), random_mask(tiny(), 0.6, seed=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    keep_masks(opt, model)
    train(model, opt, tiny, steps=3)
    new = get_mask(model).magnitude(model, fraction=0.5)
    apply_mask(model, new)
    train(model, opt, tiny, steps=3, seed=1)
    assert Mask.from_weights(model) == new == get_mask(model)


# ---------------------------------------------------------------- 5. the straight-through estimator

def _one_layer(kind, rule, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(12, 5) if kind == "linear" else nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    model = nn.Sequential(layer)
    q = random_mask(model, 0.6, seed=seed + 1)
    to_masked(model, q, rule=rule, density=0.4 if rule == "topk" else None, seed=seed,
              scores="kaiming_uniform" if rule == "topk" else "uniform")     # topk: signed scores, as Edge-Popup's
    x = torch.randn(3, 12) if kind == "linear" else torch.randn(3, 4, 7, 7)
    return model[0], q["0.weight"], x


@pytest.mark.parametrize("rule", ["round", "topk"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_score_gradient_is_weight_times_effective_weight_gradient(kind, rule):
    layer, q, x = _one_layer(kind, rule)
    assert isinstance(layer, ScoredLinear if kind == "linear" else ScoredConv2d)
    y = layer(x)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
    (y * r).sum().backward()
    # reference: the plain op on w ⊙ m, autograd for dL/dw_eff, times w
    m = layer.current_mask().float()
    assert torch.equal(m.bool() & ~q, torch.zeros_like(q))
    w_eff = (layer.weight.detach() * m).requires_grad_()
    if kind == "linear":
        y_ref = F.linear(x, w_eff, layer.bias.detach())
    else:
        y_ref = F.conv2d(x, w_eff, layer.bias.detach(), layer.stride, layer.padding, layer.dilation, layer.groups)
    torch.testing.assert_close(y.detach(), y_ref.detach(), rtol=1e-6, atol=1e-6)
    (y_ref * r).sum().backward()
    expected = layer.weight.detach() * w_eff.grad
    if rule == "topk":                                   # the rule ranks |s|: the estimator passes through abs
        assert (layer.scores[q] < 0).any() and (layer.scores[q] > 0).any()
        expected = expected * layer.scores.detach().sign()
    torch.testing.assert_close(layer.scores.grad[q], expected[q], rtol=1e-5, atol=1e-7)
    assert (layer.scores.grad[~q] == 0).all()
    assert (layer.scores.grad[q & ~m.bool()] != 0).any()  # pruned-by-the-rule entries get gradient: straight through


# ---------------------------------------------------------------- 6. conversions and round trips

def tv_resnet18(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.resnet18(num_classes=10)


def tv_mobilenet(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.mobilenet_v3_small(num_classes=10)


INPUT.update({tv_resnet18: (3, 32), tv_mobilenet: (3, 32)})
BUILDS = [pytest.param(b, id=b.__name__) for b in (lenet, resnet, tv_resnet18, tv_mobilenet)]


def _masked(build, rule, seed=0):
    model = build(seed)
    if rule == "fixed":
        return apply_mask(model, random_mask(model, 0.2, seed=seed))
    return to_masked(model, rule=rule, density=0.2 if rule == "topk" else None, seed=seed)


@pytest.mark.parametrize("build", BUILDS)
def test_to_masked_with_all_ones_changes_nothing(build):
    model = build().eval()
    x = batch(build)
    with torch.no_grad():
        before = model(x)
    params = {n: p for n, p in model.named_parameters()}
    to_masked(model)
    assert list(masked_layers(model)) == list(prunable_weights(model))  # every prunable layer is now masked
    assert all(params[n] is p for n, p in model.named_parameters() if n in params)  # the same parameters, in place
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("build", BUILDS)
def test_to_plain_gives_the_architecture_and_the_same_outputs(build, rule):
    model = _masked(build, rule).eval()
    x = batch(build)
    with torch.no_grad():
        out = model(x)
    plain = to_plain(copy.deepcopy(model)).eval()
    assert not any(isinstance(m, MaskedLayer) for m in plain.modules())
    assert all(type(plain.get_submodule(n.rsplit(".", 1)[0])) in (nn.Conv2d, nn.Linear) for n in prunable_weights(plain))
    original = build(1)
    assert list(plain.state_dict()) == list(original.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), out, rtol=1e-5, atol=1e-5)
    assert Mask.from_weights(plain) == get_mask(model)
    original.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(original.eval()(x), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("build", [lenet, resnet], ids=["lenet", "resnet20"])
def test_deepcopy_is_equal_and_independent(build, rule):
    model = _masked(build, rule)
    mask0, state0 = get_mask(model), {k: v.clone() for k, v in model.state_dict().items()}
    twin = copy.deepcopy(model)
    assert same_state(twin, model)
    assert [type(m) for m in twin.modules()] == [type(m) for m in model.modules()]
    assert get_mask(twin) == mask0
    other = random_mask(model, 0.05, seed=9)
    apply_mask(twin, other)
    assert get_mask(twin) == other
    assert get_mask(model) == mask0 and same_state(model, state0)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("build", [lenet, resnet, tv_mobilenet], ids=["lenet", "resnet20", "tv_mobilenet"])
def test_state_dict_round_trips_into_a_freshly_masked_model(build, rule, tmp_path):
    model = _masked(build, rule).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = _masked(build, rule, seed=1)
    assert get_mask(fresh) != get_mask(model)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    assert get_mask(fresh) == get_mask(model)
    x = batch(build)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))


# ---------------------------------------------------------------- 7. bad input

BAD_DENSITIES = [0, -0.1, 1.5, float("nan"), True, "0.5"]
DENSITY_USERS = {
    "keep_count": lambda d: keep_count(10, d),
    "magnitude": lambda d: Mask.ones(tiny()).magnitude(tiny(), density=d),
    "magnitude-layerwise": lambda d: Mask.ones(tiny()).magnitude(tiny(), density=d, layerwise=True),
    "random_mask": lambda d: random_mask(tiny(), d),
    "random_mask-list": lambda d: random_mask(tiny(), [0.5, d, 0.5]),
    "to_masked-topk": lambda d: to_masked(tiny(), rule="topk", density=d),
}


@pytest.mark.parametrize("bad", BAD_DENSITIES, ids=repr)
@pytest.mark.parametrize("user", list(DENSITY_USERS))
def test_bad_density_is_named(user, bad):
    with pytest.raises(ValueError, match=re.escape(f"={bad!r}")) as e:
        DENSITY_USERS[user](bad)
    assert "density" in str(e.value)


@pytest.mark.parametrize("bad", [1, 1.0, -0.1, float("nan"), True, "0.2"], ids=repr)
def test_bad_fraction_is_named(bad):
    with pytest.raises(ValueError, match=re.escape(f"fraction={bad!r}")):
        Mask.ones(tiny()).magnitude(tiny(), fraction=bad)


def test_magnitude_needs_exactly_one_target():
    m = Mask.ones(tiny())
    for kw in ({}, dict(density=0.5, fraction=0.2)):
        with pytest.raises(ValueError, match="density.*fraction"):
            m.magnitude(tiny(), **kw)


def _wrong_shape_mask():
    m = dict(Mask.ones(tiny()))
    m["2.weight"] = torch.ones(6, 4, 3, 3, dtype=torch.bool)
    return m


MASK_USERS = {
    "apply_mask": lambda m: apply_mask(tiny(), m),
    "to_masked-round": lambda m: to_masked(tiny(), m, rule="round"),
    "magnitude": lambda m: Mask(m).magnitude(tiny(), density=0.5),
}


@pytest.mark.parametrize("user", list(MASK_USERS))
def test_mask_with_a_wrong_shape_names_the_tensor_and_both_shapes(user):
    with pytest.raises(ValueError, match=re.escape("'2.weight'")) as e:
        MASK_USERS[user](_wrong_shape_mask())
    assert "(6, 4, 3, 3)" in str(e.value) and "(6, 2, 3, 3)" in str(e.value)


@pytest.mark.parametrize("user", list(MASK_USERS))
def test_mask_with_an_unknown_name_names_it(user):
    m = {**Mask.ones(tiny()), "conv9.weight": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=re.escape("'conv9.weight'")):
        MASK_USERS[user](m)


def test_unknown_rule_lists_the_rules():
    with pytest.raises(ValueError, match=re.escape("'sort'")) as e:
        to_masked(tiny(), rule="sort")
    assert all(repr(r) in str(e.value) for r in RULES)


def test_topk_needs_a_density_and_others_refuse_one():
    with pytest.raises(ValueError, match="density=None"):
        to_masked(tiny(), rule="topk")
    for rule in ("fixed", "round"):
        with pytest.raises(ValueError, match="topk"):
            to_masked(tiny(), rule=rule, density=0.1)


@pytest.mark.parametrize("k", [-1, 11])
def test_top_count_k_out_of_range(k):
    with pytest.raises(ValueError, match=f"k={k}"):
        top_count(torch.zeros(10), k)


def test_random_mask_wrong_number_or_names_of_densities():
    with pytest.raises(ValueError, match="2 densities for 3 layers"):
        random_mask(tiny(), [0.5, 0.1])
    with pytest.raises(ValueError, match=re.escape("['5.weight']")):
        random_mask(tiny(), {"0.weight": 0.1, "2.weight": 0.1, "x.weight": 0.2})


# ---------------------------------------------------------------- 8. keep_masks and optimizers that mask themselves

class DeclaringSGD(torch.optim.SGD):
    "An SGD that says it masks some weights itself (as the engine's MaskedSGD does)."


def _revive(model, mask):
    with torch.no_grad():
        for n, w in prunable_weights(model).items():
            w[~mask[n]] = 1.0


@pytest.mark.parametrize("declared", ["0.weight", "5.weight"])
def test_keep_masks_skips_exactly_the_declared_weights(declared):
    model = tiny()
    mask = random_mask(model, 0.4, seed=0)
    apply_mask(model, mask)
    weights = prunable_weights(model)
    opt = DeclaringSGD(model.parameters(), lr=0.01)
    opt.masks = {weights[declared]: masked_layers(model)[declared].mask}
    keep_masks(opt, model)
    _revive(model, mask)
    opt.zero_grad()
    F.cross_entropy(model(batch(tiny)), torch.arange(4)).backward()
    opt.step()
    for n, w in weights.items():
        pruned = w[~mask[n]]
        if n == declared:
            assert (pruned != 0).all(), n  # left to the optimizer: the hook did not touch it
        else:
            assert (pruned == 0).all(), n


def test_keep_masks_without_declared_masks_masks_every_layer():
    model = tiny()
    mask = random_mask(model, 0.4, seed=0)
    apply_mask(model, mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    handle = keep_masks(opt, model)
    _revive(model, mask)
    F.cross_entropy(model(batch(tiny)), torch.arange(4)).backward()
    opt.step()
    assert Mask.from_weights(model) == mask
    handle.remove()  # the handle removes the hook: pruned weights now move
    _revive(model, mask)
    opt.step()
    assert all((w[~mask[n]] != 0).all() for n, w in prunable_weights(model).items())
