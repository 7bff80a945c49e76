"""paper_repro.baselines: Smart-Ratio keep ratios (range, linear layers, decay with depth, exact budget, overflow,
hand-computed examples, agreement with the official formula), the Smart-Ratio mask (counts, seeds, which layers
are linear), and bad input."""
import math
from fractions import Fraction
from functools import lru_cache

import pytest
import torch
from torch import nn

from paper_repro.baselines import (SR_FAMILIES, smart_ratio, smart_ratio_layers, smart_ratio_linear, smart_ratio_mask,
                                   sr_score)
from paper_repro.masks import Mask, keep_count
from paper_repro.models import get_model, prunable_weights


pytestmark = pytest.mark.usefixtures("one_thread")


MODELS = {"resnet20": "resnet", "vgg16-gems": "vgg", "mobilenet-v2": "mobilenet", "lenet-300-100": "resnet",
          "conv4": "resnet"}
DENSITIES = [0.5, 0.2, 0.05, 0.014, 0.005]


@lru_cache(maxsize=None)
def model(name):
    return get_model(name, in_channels=1, input_size=28) if name == "lenet-300-100" else get_model(name)


@lru_cache(maxsize=None)
def sizes(name):
    "Weights per prunable layer, in the model's order (its last layer plays the one linear layer)."
    return tuple(w.numel() for w in prunable_weights(model(name)).values())


def kept(sizes, ratios):
    return [keep_count(m, r) for m, r in zip(sizes, ratios)]


def official(sizes, density, family, linear_keep=0.3):
    """Reference: the official computation with one linear layer, in floats: γ scales all but the last entry, then
    the overflow walk with its int truncations. It spends K = keep_count(N, density) weights rather than density·N,
    so that the two can be compared tightly."""
    L, m = len(sizes), sizes
    p = [(L - l + 1) ** 2 + (L - l + 1) if family != "vgg" else ((L - l + 1) ** 2 + (L - l + 1)) / l ** 2
         for l in range(1, L)] + [linear_keep]
    gamma = (keep_count(sum(m), density) - m[-1] * linear_keep) / sum(ml * pl for ml, pl in zip(m[:-1], p[:-1]))
    p = [gamma * pl for pl in p[:-1]] + [linear_keep]
    extra = 0
    for i in range(L - 1):
        if p[i] >= 1:
            extra, p[i] = extra + int((p[i] - 1) * m[i]), 1
        else:
            room = int((1 - p[i]) * m[i])
            if room >= extra: p[i], extra = p[i] + extra / m[i], 0
            else: extra, p[i] = extra - room, 1
        if extra == 0: break
    return p


# ---------------------------------------------------------------- 1. the ratios

@pytest.mark.parametrize("family", ["resnet", "vgg"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("name", list(MODELS))
def test_ratios_spend_the_budget_within_one_weight_per_layer(name, density, family):
    """Ratios are in (0, 1], the linear layer keeps 0.3, Σ m_l r_l = K exactly up to float error, and the kept
    counts Σ keep_count(m_l, r_l) are within one weight per layer (in fact half) of K = keep_count(N, d)."""
    m = sizes(name)
    r = smart_ratio(m, density, family=family)
    assert len(r) == len(m) and all(0 < x <= 1 for x in r)
    assert r[-1] == 0.3
    K = keep_count(sum(m), density)
    assert math.isclose(math.fsum(ml * rl for ml, rl in zip(m, r)), K, rel_tol=1e-12, abs_tol=1e-6)
    assert abs(sum(kept(m, r)) - K) <= len(m) / 2


@pytest.mark.parametrize("family", ["resnet", "vgg"])
@pytest.mark.parametrize("density", DENSITIES + [0.8, 0.95])
@pytest.mark.parametrize("name", list(MODELS))
def test_ratios_never_grow_with_depth(name, density, family):
    """Before clipping the non-linear ratios fall strictly with depth (p_l decreases in l for both families);
    overflow only raises the layer that absorbs it up to at most the clipped ones, so they never grow."""
    r = smart_ratio(sizes(name), density, family=family)[:-1]
    assert all(a >= b for a, b in zip(r, r[1:]))
    if max(r) < 1:
        assert all(a > b for a, b in zip(r, r[1:]))


@pytest.mark.parametrize("density", [0.9, 0.05, 0.014])
@pytest.mark.parametrize("name", ["resnet20", "vgg16-gems", "mobilenet-v2"])
def test_agrees_with_the_official_computation(name, density):
    """Without clipping the ratios are the official ones (up to float rounding); with clipping the official int
    truncations shift at most a weight per clipped layer, so each layer's kept weights differ by less than L."""
    family, m = MODELS[name], sizes(name)
    ours, ref = smart_ratio(m, density, family=family), official(list(m), density, family)
    if max(ours[:-1]) < 1:
        assert ours == pytest.approx(ref, rel=1e-9)
    else:
        assert all(abs(ml * (a - b)) < len(m) for ml, a, b in zip(m, ours, ref))


@pytest.mark.parametrize("density,family,min_clipped", [(0.9, "resnet", 3), (0.5, "vgg", 2), (0.99, "resnet", 15)])
def test_overflow_clips_early_layers_and_still_spends_the_budget(density, family, min_clipped):
    """At high densities the first layers' γ·p_l exceeds 1: they keep everything, the excess moves down the network,
    and the total still comes out at K."""
    m = sizes("resnet20")
    r = smart_ratio(m, density, family=family)
    clipped = [x == 1.0 for x in r[:-1]]
    assert sum(clipped) >= min_clipped and clipped[: sum(clipped)] == [True] * sum(clipped)  # a prefix clips
    K = keep_count(sum(m), density)
    assert math.isclose(math.fsum(ml * rl for ml, rl in zip(m, r)), K, rel_tol=1e-12)
    assert abs(sum(kept(m, r)) - K) <= len(m) / 2
    assert r[-1] == 0.3


TOY = [100, 200, 600, 100]  # three convolutions and a linear layer: N = 1000, L = 4


def test_hand_example_resnet():
    """d = 0.2: K = 200; the linear layer keeps 0.3·100 = 30; p = (4²+4, 3²+3, 2²+2) = (20, 12, 6);
    Σ m p = 2000 + 2400 + 3600 = 8000; γ = 170/8000."""
    r = smart_ratio(TOY, 0.2)
    assert r == pytest.approx([20 * 170 / 8000, 12 * 170 / 8000, 6 * 170 / 8000, 0.3], rel=1e-12)
    assert r == pytest.approx([0.425, 0.255, 0.1275, 0.3], rel=1e-12)
    assert kept(TOY, r) == [43, 51, 77, 30]  # 42.5, 51, 76.5, 30 rounded half up: 201, one over K


def test_hand_example_vgg_with_overflow():
    """p = (20/1, 12/4, 6/9); Σ m p = 2000 + 600 + 400 = 3000; γ = 170/3000, so layer 1 would keep 340/300 of itself:
    it keeps 1 and passes (40/300)·100 = 40/3 weights to layer 2, which keeps 51/300 + (40/3)/200 = 71/300."""
    r = smart_ratio(TOY, 0.2, family="vgg")
    assert r == pytest.approx([1.0, 71 / 300, (170 / 3000) * (6 / 9), 0.3], rel=1e-12)
    assert 100 + 200 * 71 / 300 + 600 * 17 / 450 + 30 == pytest.approx(200)
    assert kept(TOY, r) == [100, 47, 23, 30]


def test_hand_example_without_linear_layers():
    """num_linear=0: all four layers decay, p = (20, 12, 6, 2), Σ m p = 8200, γ = 200/8200."""
    r = smart_ratio(TOY, 0.2, num_linear=0)
    assert r == pytest.approx([p * 200 / 8200 for p in (20, 12, 6, 2)], rel=1e-12)


def test_two_linear_layers_both_keep_linear_keep_and_the_total_is_exact():
    """The official code would scale every entry but the last, the first linear layer's 0.3 included; here both keep
    0.3 and the three convolutions share 200 − 30 = 170 weights: p = (30, 20, 12), Σ m p = 14200."""
    m = [100, 200, 600, 50, 50]
    r = smart_ratio(m, 0.2, num_linear=2)
    assert r == pytest.approx([30 * 170 / 14200, 20 * 170 / 14200, 12 * 170 / 14200, 0.3, 0.3], rel=1e-12)
    assert math.fsum(a * b for a, b in zip(m, r)) == pytest.approx(200, rel=1e-12)


def test_linear_keep_is_a_parameter_and_density_one_needs_it_at_one():
    r = smart_ratio(TOY, 0.2, linear_keep=0.1)
    assert r[-1] == 0.1 and math.fsum(a * b for a, b in zip(TOY, r)) == pytest.approx(200)
    assert smart_ratio(TOY, 1.0, linear_keep=1.0) == [1.0] * 4
    assert smart_ratio([7], 0.5, num_linear=0) == [4 / 7]  # one layer keeps K = keep_count(7, 0.5) = 4 weights


def test_scores():
    assert [sr_score("resnet", 22, l) for l in (1, 21)] == [506, 6]
    assert sr_score("vgg", 14, 2) == Fraction(13 ** 2 + 13, 4)
    assert set(SR_FAMILIES) == {"resnet", "mobilenet", "vgg"}
    assert smart_ratio(sizes("mobilenet-v2"), 0.05, family="mobilenet") == smart_ratio(sizes("mobilenet-v2"), 0.05)


@pytest.mark.parametrize("kwargs,fragments", [
    (dict(density=0.0), ["density=0.0", "(0, 1]"]),
    (dict(density=1.5), ["density=1.5", "(0, 1]"]),
    (dict(density=True), ["density=True"]),
    (dict(density=0.2, family="densenet"), ["family='densenet'", "'resnet'", "'mobilenet'", "'vgg'"]),
    (dict(layer_sizes=[], density=0.2), ["layer_sizes is empty"]),
    (dict(layer_sizes=[100, -5, 10], density=0.2), ["layer_sizes[1]=-5", "positive integer"]),
    (dict(layer_sizes=[100, 0], density=0.2), ["layer_sizes[1]=0"]),
    (dict(layer_sizes=[100, 3.0], density=0.2), ["layer_sizes[1]=3.0"]),
    (dict(density=0.2, linear_keep=0.0), ["linear_keep=0.0", "(0, 1]"]),
    (dict(density=0.2, linear_keep=1.5), ["linear_keep=1.5"]),
    (dict(density=0.2, num_linear=4), ["num_linear=4", "[0, 4)"]),
    (dict(density=0.2, num_linear=-1), ["num_linear=-1"]),
    (dict(density=0.2, num_linear=1.0), ["num_linear=1.0"]),
    (dict(density=0.02), ["density=0.02 keeps 20 of 1,000", "alone keep 30.0", "above 0.03"]),
    (dict(density=0.03), ["keeps 30 of 1,000", "alone keep 30.0", "leaving none"]),
    (dict(density=0.94), ["keeps 940 of 1,000", "at most 930.0", "density 0.93", "larger linear_keep"]),
    (dict(density=1.0), ["at most 930.0"]),
    (dict(density=0.0004, num_linear=0), ["keeps 0 of 1,000"]),
])
def test_bad_input_is_named(kwargs, fragments):
    kwargs = {"layer_sizes": TOY, **kwargs}
    with pytest.raises(ValueError) as e:
        smart_ratio(**kwargs)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


# ---------------------------------------------------------------- 2. the mask

@pytest.mark.parametrize("density", [0.2, 0.014])
@pytest.mark.parametrize("name", ["resnet20", "lenet-300-100"])
def test_mask_keeps_exactly_the_ratio_counts(name, density):
    net = model(name)
    ratios = smart_ratio_layers(net, density)
    mask = smart_ratio_mask(net, density, seed=3)
    assert list(mask) == list(prunable_weights(net))
    table = mask.layer_density()
    assert table.kept.tolist() == [keep_count(n, ratios[l]) for l, n in zip(table.layer, table["size"])]
    assert abs(mask.nonzeros - keep_count(mask.size, density)) <= len(mask) / 2
    assert ratios["fc.weight"] == 0.3


def test_mask_is_seed_reproducible_and_seed_dependent():
    net = model("resnet20")
    a, b = smart_ratio_mask(net, 0.05, seed=0), smart_ratio_mask(net, 0.05, seed=1)
    assert a == smart_ratio_mask(net, 0.05, seed=0)
    assert a != b
    assert all(not torch.equal(a[n], b[n]) for n in a if 0 < int(a[n].sum()) < a[n].numel())
    assert a.layer_density().kept.tolist() == b.layer_density().kept.tolist()


@pytest.mark.parametrize("name,expected", [
    ("resnet20", ["fc.weight"]),             # an nn.Linear classifier
    ("vgg16-gems", ["fc.weight"]),           # a 1x1-conv classifier: the last layer counts as linear
    ("mobilenet-v2", ["fc.weight"]),
    ("lenet-300-100", ["fc.weight"]),        # an MLP: only the classifier
    ("conv4", ["hidden.0.weight", "hidden.1.weight", "fc.weight"]),
])
def test_which_layers_are_linear(name, expected):
    assert smart_ratio_linear(model(name)) == expected
    if name != "conv4":
        assert smart_ratio_layers(model(name), 0.05, family=MODELS[name])["fc.weight"] == 0.3


def test_vgg_classifier_is_a_conv_and_still_held():
    assert isinstance(model("vgg16-gems").fc, nn.Conv2d)


def test_exclude_and_linear_override():
    net = model("resnet20")
    assert smart_ratio_linear(net, exclude="last") == []
    r = smart_ratio_layers(net, 0.05, exclude=["first", "last"])
    assert "conv1.weight" not in r and "fc.weight" not in r and all(x < 1 for x in r.values())
    mask = smart_ratio_mask(net, 0.05, exclude="last")
    assert "fc.weight" not in mask and abs(mask.nonzeros - keep_count(mask.size, 0.05)) <= len(mask) / 2
    c4 = model("conv4")
    with pytest.raises(ValueError, match=r"3 linear layer\(s\) at linear_keep=0.3 alone keep"):
        smart_ratio_mask(c4, 0.05)
    r = smart_ratio_layers(c4, 0.05, linear=["fc.weight"])
    assert r["fc.weight"] == 0.3 and r["convs.0.weight"] > r["hidden.0.weight"] > r["hidden.1.weight"]
    with pytest.raises(ValueError, match=r"linear=\['fc'\]: not among the prunable weights"):
        smart_ratio_layers(c4, 0.05, linear=["fc"])


class LinearFirst(nn.Module):
    "A linear layer registered before two convolutions: the ratios must go back to the right names."
    def __init__(self):
        super().__init__()
        self.head, self.a, self.b = nn.Linear(10, 10), nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3)


def test_linear_layers_anywhere_are_moved_last_and_mapped_back():
    net = LinearFirst()
    assert smart_ratio_linear(net) == ["head.weight", "b.weight"]  # nn.Linear, and the last layer
    r = smart_ratio_layers(net, 0.4)
    assert list(r) == ["head.weight", "a.weight", "b.weight"]
    assert r["head.weight"] == r["b.weight"] == 0.3
    assert 100 * 0.3 + 288 * r["a.weight"] + 576 * 0.3 == pytest.approx(keep_count(964, 0.4))
    mask = smart_ratio_mask(net, 0.4)
    assert [int(mask[n].sum()) for n in r] == [30, keep_count(288, r["a.weight"]), keep_count(576, 0.3)]


def test_density_one_keeps_everything_with_linear_keep_one():
    net = model("lenet-300-100")
    assert smart_ratio_mask(net, 1.0, linear_keep=1.0) == Mask.ones(net)


def test_mask_errors():
    net = model("resnet20")
    with pytest.raises(ValueError, match="family='transformer'"):
        smart_ratio_mask(net, 0.05, family="transformer")
    with pytest.raises(ValueError, match=r"density=0.999 keeps 270,625 of 270,896 weights, but Smart-Ratio keeps at most"):
        smart_ratio_mask(net, 0.999)
    with pytest.raises(ValueError, match="density=0"):
        smart_ratio_mask(net, 0)


# --- small-dense (Ma et al., Appendix C) ---------------------------------------------------------------------------

from paper_repro.baselines import small_dense
from paper_repro.models import count_parameters


@pytest.mark.parametrize("name, opts", [("lenet-300-100", dict(in_channels=1, input_size=28)), ("resnet20", {})])
@pytest.mark.parametrize("density", [0.2, 0.05])
def test_small_dense_matches_the_sparse_count_within_2_percent(name, opts, density):
    sd = small_dense(name, density, **opts)
    full = get_model(name, **opts)
    n = sum(p.numel() for p in prunable_weights(full).values())
    assert sd.target == keep_count(n, density) + count_parameters(full) - n
    assert count_parameters(get_model(**sd.arch)) == sd.params
    assert abs(sd.params / sd.target - 1) <= 0.02 and 0 < sd.width < 1


def test_small_dense_is_the_closest_width():
    sd = small_dense("resnet20", 0.05)
    counts = {count_parameters(get_model("resnet20", width=w / 1000)) for w in range(150, 320)}
    assert abs(sd.params - sd.target) == min(abs(c - sd.target) for c in counts)


def test_small_dense_excluded_layers_count_as_dense():
    a = small_dense("resnet20", 0.05)
    b = small_dense("resnet20", 0.05, exclude=("first", "last"))
    assert b.target > a.target and b.params >= a.params


def test_small_dense_of_a_narrower_network_searches_below_its_width():
    half, full = small_dense("resnet20", 0.1, width=0.5), small_dense("resnet20", 0.1)
    assert half.width <= 0.5 and half.width < full.width and half.target < full.target
    counts = {count_parameters(get_model("resnet20", width=w / 1000)) for w in range(100, 501)}   # 3-channel steps: coarse
    assert abs(half.params - half.target) == min(abs(c - half.target) for c in counts)
    assert small_dense("resnet20", 1.0, width=0.5).width == 0.5


def test_small_dense_bad_input():
    with pytest.raises(ValueError, match="density=1.5"):
        small_dense("resnet20", 1.5)
