"""paper_repro.connectivity: angular/cosine/Euclidean distances in every input form (0, 1, 2 for identical, orthogonal,
opposite; the mask intersection honoured; hand-computed values), distance matrices (symmetric, zero diagonal, the
init row on each round's own mask), the linear path (endpoints are evaluate() exactly, with and without BatchNorm,
in both BN modes; every row is the network at that alpha; masked pairs; models untouched), the error barrier over the
mean endpoint error (= instability; the larger-endpoint variant by name only), linear mode instability through cached
finetuning, bad input."""
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from paper_repro.connectivity import (BARRIER_BASELINES, BN_MODES, DISTANCES, Instability, angular_distance, cosine_distance,
                                      distance_matrix, error_barrier, euclidean_distance, get_distance, instability,
                                      interpolate, interpolated, linear_mode_instability, masked_vectors)
from paper_repro.core import expect_error
from paper_repro.data import TensorLoader, load_dataset
from paper_repro.masks import Mask, apply_mask, get_mask, random_mask
from paper_repro.models import get_model, prunable_weights
from paper_repro.runs import STATS
from paper_repro.recipes import Recipe
from paper_repro.train import evaluate, fit, last_value
from paper_repro.tickets import arch_for, Ticket

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = arch_for("digits", "lenet-300-100", seed=0)
RES_ARCH = arch_for("digits", "resnet20", width=0.25, seed=0)       # has BatchNorm
QUICK = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", epochs=1, batch_size=64)

E1, E2 = torch.tensor([1., 0., 0., 0.]), torch.tensor([0., 1., 0., 0.])
FORMS = {
    "tensor": lambda t: t,
    "list": lambda t: [t[:1], t[1:].view(3, 1)],
    "tuple": lambda t: (t[:3].view(3, 1), t[3:]),
    "mapping": lambda t: {"w": t[:2].view(1, 2), "v": t[2:]},
}


@pytest.fixture(scope="module")
def digits():
    return {"train": load_dataset("digits", "train"), "test": load_dataset("digits", "test")}


def trained(arch, data, recipe=QUICK, seed=0):
    net = get_model(**arch)
    fit(net, data, recipe, seed=seed, progress=False)
    return net


@pytest.fixture(scope="module")
def lenets(digits):
    return trained(ARCH, digits), trained(dict(ARCH, seed=1), digits)


@pytest.fixture(scope="module")
def resnets(digits):
    "Same initialisation, different SGD noise: two BatchNorm networks with their own running statistics."
    r = QUICK.replace(epochs=2, lr=0.1)
    return trained(RES_ARCH, digits, r, seed=0), trained(RES_ARCH, digits, r, seed=1)


# ---------------------------------------------------------------- distances

@pytest.mark.parametrize("form", FORMS)
def test_identical_orthogonal_opposite(form):
    f = FORMS[form]
    assert angular_distance(f(E1), f(E1)) == 0.0
    assert angular_distance(f(E1), f(E2)) == 1.0
    assert angular_distance(f(E1), f(-E1)) == 2.0
    assert angular_distance(f(E1 + 2*E2), f(7*(E1 + 2*E2))) < 1e-7            # invariant to the norm
    assert cosine_distance(f(E1), f(E1)) == pytest.approx(0, abs=1e-15)
    assert cosine_distance(f(E1), f(E2)) == pytest.approx(1, abs=1e-15)
    assert cosine_distance(f(E1), f(-E1)) == pytest.approx(2, abs=1e-15)
    assert euclidean_distance(f(E1), f(E2)) == pytest.approx(math.sqrt(2), abs=1e-15)
    assert euclidean_distance(f(E1), f(E1)) == 0.0


def test_models_and_state_dicts():
    net = get_model(**ARCH)
    neg = copy.deepcopy(net)
    with torch.no_grad():
        for w in prunable_weights(neg).values(): w.neg_()
    assert angular_distance(net, net) == 0.0 and angular_distance(net, neg) == 2.0
    other = get_model(**dict(ARCH, seed=1))
    assert abs(angular_distance(net, other) - 1) < 0.01                         # unrelated networks: ~orthogonal
    # a masked model's state dict against the plain one: mask buffers are not compared
    masked = apply_mask(copy.deepcopy(net), Mask.ones(net)).state_dict()
    va, vb = masked_vectors(net.state_dict(), masked)
    assert len(va) == sum(t.numel() for t in net.state_dict().values()) and torch.equal(va, vb)
    # a module is its prunable weights as it computes with them (w ⊙ mask)
    m = random_mask(net, 0.3, seed=0)
    sparse = apply_mask(copy.deepcopy(net), m)
    assert angular_distance(sparse, net, m) == 0.0
    assert angular_distance(sparse, {n: w*m[n] for n, w in prunable_weights(net).items()}) == 0.0


def test_hand_computed_intersection():
    a, b = torch.tensor([3., 4., 100.]), torch.tensor([4., 3., -7.])
    m1, m2 = torch.tensor([1, 1, 1]), torch.tensor([True, True, False])
    assert angular_distance(a, b, (m1, m2)) == pytest.approx(2*math.acos(0.96)/math.pi, abs=1e-15)
    assert cosine_distance(a, b, (m1, m2)) == pytest.approx(0.04, abs=1e-15)
    assert euclidean_distance(a, b, (m1, m2)) == pytest.approx(math.sqrt(2), abs=1e-15)
    # 3-4-5 with a cosine of 0: (3, 4) vs (-4, 3) is orthogonal
    assert angular_distance(torch.tensor([3., 4., 9.]), torch.tensor([-4., 3., 1.]), torch.tensor([1, 1, 0])) == pytest.approx(1, abs=1e-15)
    # pairs in the list and mapping forms
    assert euclidean_distance([a], [b], ([m1], [m2])) == pytest.approx(math.sqrt(2), abs=1e-15)
    assert euclidean_distance({"x": a}, {"x": b}, ({"x": m1}, Mask({"x": m2}))) == pytest.approx(math.sqrt(2), abs=1e-15)


@pytest.mark.parametrize("name", DISTANCES)
def test_outside_the_intersection_does_not_matter(name):
    d = get_distance(name)
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (30, 20), "b": (50,)}
    wa = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    wb = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    m1, m2 = random_mask(shapes, 0.6, seed=1), random_mask(shapes, 0.6, seed=2)
    both = m1 & m2
    x = d(wa, wb, (m1, m2))
    for seed in range(3):
        g2 = torch.Generator().manual_seed(10 + seed)
        sa = {n: torch.where(both[n], wa[n], 100*torch.randn(wa[n].shape, generator=g2)) for n in wa}
        sb = {n: torch.where(both[n], wb[n], -100*torch.randn(wb[n].shape, generator=g2)) for n in wb}
        assert d(sa, sb, (m1, m2)) == x
    assert d({n: wa[n]*both[n] for n in wa}, {n: wb[n]*both[n] for n in wb}) == pytest.approx(x, abs=1e-12)
    assert d(wa, wb, both) == x
    assert d(wa, wb) != x


def test_distance_bad_input():
    expect_error(lambda: angular_distance(E1, torch.zeros(3)), ValueError, "shapes differ", "(4,)", "(3,)")
    expect_error(lambda: angular_distance({"w": E1}, {"w": E1.view(2, 2)}), ValueError, "w: shapes differ", "(2, 2)")
    expect_error(lambda: angular_distance({"w": E1}, {"v": E1}), ValueError, "only in a: ['w']", "only in b: ['v']")
    expect_error(lambda: angular_distance([E1], [E1, E2]), ValueError, "a has 1 tensors but b has 2")
    expect_error(lambda: angular_distance(E1, [E1]), ValueError, "a is a tensor but b is a list")
    expect_error(lambda: angular_distance(E1, E2, torch.ones(3, dtype=torch.bool)), ValueError, "mask's shape (3,)", "(4,)")
    expect_error(lambda: angular_distance({"w": E1}, {"w": E2}, {"v": torch.ones(4)}), ValueError, "mask tensor 'v'")
    expect_error(lambda: angular_distance({"w": E1}, {"w": E2}, ({"w": E1 > 0}, {"v": E1 > 0})), ValueError, "different tensors")
    expect_error(lambda: angular_distance(E1, E2, {"w": E1}), ValueError, "does not fit inputs of the form 'tensor'")
    expect_error(lambda: angular_distance(E1, E2, (E1 > 0, E2 > 0, E1 > 0)), ValueError, "two entries, not 3")
    expect_error(lambda: angular_distance(E1, E2, torch.tensor([0.5, 1, 1, 1])), ValueError, "values other than 0 and 1")
    expect_error(lambda: angular_distance(E1, E2, (E1 > 0, E2 > 0)), ValueError, "no entry to compare")
    expect_error(lambda: angular_distance(E1, 0*E2), ValueError, "b is zero")
    expect_error(lambda: cosine_distance(0*E1, E2), ValueError, "a is zero")
    expect_error(lambda: angular_distance(E1, E2*float("nan")), ValueError, "b['tensor']", "non-finite")
    expect_error(lambda: angular_distance("w", E1), ValueError, "a=str")
    expect_error(lambda: get_distance("manhattan"), ValueError, "distance='manhattan'", "'angular', 'cosine', 'euclidean'")


# ---------------------------------------------------------------- distance matrices

@pytest.fixture(scope="module")
def fake_imp():
    "Nested masks and weights zero outside each round's mask: IMP's rounds without the training."
    g = torch.Generator().manual_seed(0)
    shapes = {"l1.weight": (40, 30), "l2.weight": (10, 40)}
    init = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    masks = [Mask({n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()})]
    for _ in range(3): masks.append(masks[-1].magnitude(init, fraction=0.3))
    rounds = [({n: (init[n] + 0.5*torch.randn(init[n].shape, generator=g))*m[n] for n in m} | {"l1.bias": torch.zeros(40)}, m)
              for m in masks]
    return rounds, init


@pytest.mark.parametrize("name", DISTANCES)
def test_distance_matrix(fake_imp, name):
    rounds, init = fake_imp
    D = distance_matrix(rounds, init=init, distance=name)
    n = len(rounds)
    assert list(D.index) == list(range(n)) + ["init"] and list(D.columns) == list(D.index)
    assert np.array_equal(D.values, D.values.T) and (np.diag(D.values) == 0).all()
    d = DISTANCES[name]
    for i in range(n):
        for j in range(n):
            if i != j: assert D.iloc[i, j] == pytest.approx(d(rounds[i][0], rounds[j][0], (rounds[i][1], rounds[j][1])), abs=1e-12)
        # the init column compares on round i's own mask
        assert D.iloc[i, n] == pytest.approx(d(rounds[i][0], init, rounds[i][1]), abs=1e-12)
        if i and name == "angular":
            assert abs(D.iloc[i, n] - d(rounds[i][0], init, rounds[0][1])) > 1e-3   # not the whole tensors
    no_init = distance_matrix(rounds, distance=name, labels=list("abcd"))
    assert list(no_init.index) == list("abcd")
    assert np.allclose(no_init.values, D.values[:n, :n], atol=0, rtol=0)


def test_distance_matrix_bad_input(fake_imp):
    rounds, init = fake_imp
    expect_error(lambda: distance_matrix(rounds, distance="l1"), ValueError, "distance='l1'", "'angular', 'cosine', 'euclidean'")
    expect_error(lambda: distance_matrix(rounds, labels=[1, 2]), ValueError, "give 4 distinct labels")
    expect_error(lambda: distance_matrix(rounds, init=init, labels=[0, 1, 2, "init"]), ValueError, "other than 'init'")
    expect_error(lambda: distance_matrix([rounds[0], (rounds[1][0], {"l1.weight": rounds[1][1]["l1.weight"]})]), ValueError,
                  "rounds[1]'s mask does not match")
    expect_error(lambda: distance_matrix(rounds, init={"l1.weight": torch.zeros(3)}), ValueError, "init:")
    expect_error(lambda: distance_matrix([]), ValueError, "rounds is empty")
    expect_error(lambda: distance_matrix([rounds[0][0]]), ValueError, "rounds[0]", "(weights, mask) pair")


# ---------------------------------------------------------------- the linear path

def _ends_match(path, a, b, test):
    for row, model in ((path.iloc[0], a), (path.iloc[-1], b)):
        assert dict(loss=row.loss, acc=row.acc) == evaluate(model, test)      # exactly


def test_lenet_path(lenets, digits):
    a, b = lenets
    test = digits["test"]
    before = copy.deepcopy(a.state_dict())
    path = interpolate(a, b, test)
    assert path.columns.tolist() == ["alpha", "loss", "acc", "error"] and len(path) == 20
    assert path.alpha.iloc[0] == 0 and path.alpha.iloc[-1] == 1 and np.allclose(np.diff(path.alpha), 1/19)
    assert np.array_equal(path.error, 1 - path.acc)
    _ends_match(path, a, b, test)
    # without BatchNorm the two modes are the same computation; a dataset name means its test split
    pd.testing.assert_frame_equal(path, interpolate(a, b, test, bn="interpolate"))
    pd.testing.assert_frame_equal(path, interpolate(a, b, "digits"))
    # every row is the network at that alpha (no state leaks from one alpha to the next)
    for _, row in path.iloc[[4, 9, 15]].iterrows():
        assert dict(loss=row.loss, acc=row.acc) == evaluate(interpolated(a, b, row.alpha), test)
    # the same line read backwards
    back = interpolate(b, a, test)
    assert np.allclose(back.error.values[::-1], path.error.values, atol=0.01)
    assert error_barrier(path) > 0.02                                          # two initialisations: not connected
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())   # untouched


def test_self_path_is_flat(lenets, digits):
    a, _ = lenets
    path = interpolate(a, a, digits["test"], alphas=9)
    assert path.loss.nunique() == 1 and path.error.nunique() == 1
    assert error_barrier(path) == 0.0 and instability(path) == 0.0


@pytest.mark.parametrize("bn", BN_MODES)
def test_batchnorm_path(resnets, digits, bn):
    a, b = resnets
    test = digits["test"]
    path = interpolate(a, b, test, alphas=6, bn=bn, train=digits["train"])
    _ends_match(path, a, b, test)
    mid = interpolated(a, b, 0.6, bn=bn, train=digits["train"])
    assert dict(loss=path.loss.iloc[3], acc=path.acc.iloc[3]) == evaluate(mid, test)
    ra, rb, rm = a.bn1.running_var, b.bn1.running_var, mid.bn1.running_var
    if bn == "interpolate": assert torch.allclose(rm, 0.4*ra + 0.6*rb, atol=1e-6)
    else:                                   # recomputed: the variance of what enters bn1, on the training data
        x = next(iter(TensorLoader(digits["train"], 5000, shuffle=False, device="cpu")))[0]
        with torch.no_grad(): true = mid.conv1(x).transpose(0, 1).flatten(1).var(1)
        assert torch.allclose(rm, true, rtol=0.05)
        assert not torch.allclose(rm, 0.4*ra + 0.6*rb, rtol=0.05)
    self_path = interpolate(a, a, test, alphas=3, bn="interpolate")
    assert self_path.loss.nunique() == 1


def test_recompute_needs_train_data(resnets, digits):
    a, b = resnets
    expect_error(lambda: interpolate(a, b, digits["test"]), ValueError, "BatchNorm", "train=", "bn='interpolate'")
    few = interpolate(a, b, digits["test"], alphas=[0, 0.5, 1], train=digits["train"], bn_batches=1, batch_size=256)
    assert len(few) == 3                                                        # one batch of 256 for the statistics


def test_masked_pair(lenets, digits):
    a, b = lenets
    ma, mb = random_mask(a, 0.4, seed=0), random_mask(a, 0.2, seed=1)
    sa, sb = apply_mask(copy.deepcopy(a), ma), apply_mask(copy.deepcopy(b), mb)
    union = Mask({n: ma[n] | mb[n] for n in ma})
    mid = interpolated(sa, sb, 0.3)
    assert get_mask(mid) == Mask.from_weights(mid) and Mask.from_weights(mid) == union   # plain, zero exactly outside m_a ∪ m_b
    path = interpolate(sa, sb, digits["test"], alphas=4)
    _ends_match(path, sa, sb, digits["test"])
    assert type(interpolated(sa, sb, 1).fc).__name__ == "MaskedLinear"       # an endpoint is the model as given
    path2 = interpolate(sa, b, digits["test"], alphas=3)                     # masked against plain: allowed
    assert path2.acc.iloc[-1] == evaluate(b, digits["test"])["acc"]


def test_interpolate_bad_input(lenets, resnets, digits):
    a, b = lenets
    test = digits["test"]
    expect_error(lambda: interpolate(a, b, test, alphas=[0, 0.5, 1.2]), ValueError, "[1.2] outside [0, 1]")
    expect_error(lambda: interpolate(a, b, test, alphas=[-0.1, 1]), ValueError, "[-0.1] outside [0, 1]")
    expect_error(lambda: interpolate(a, b, test, alphas=1), ValueError, "alphas=1", ">= 2")
    expect_error(lambda: interpolate(a, b, test, alphas="all"), ValueError, "alphas='all'")
    expect_error(lambda: interpolate(a, b, test, bn="average"), ValueError, "bn='average'", "'recompute', 'interpolate'")
    expect_error(lambda: interpolate(a, resnets[0], test), ValueError, "MLP", "ResNet")
    wide = get_model(**arch_for("digits", "lenet-300-100", width=0.5, seed=0))
    expect_error(lambda: interpolate(a, wide, test), ValueError, "hidden.0.weight: shapes differ", "(300, 64)", "(150, 64)")
    expect_error(lambda: interpolate(a, b, test, bn_batches=0), ValueError, "bn_batches=0")
    expect_error(lambda: interpolate(a, b, digits), ValueError, "data=dict")
    expect_error(lambda: interpolated(a, b, 1.5), ValueError, "[1.5] outside [0, 1]")


# ---------------------------------------------------------------- barriers

def test_error_barrier_is_over_the_mean_endpoint_error():
    """The acceptance example: errors 0.1, 0.3, 0.2 at alpha 0, 0.5, 1. Maene et al. 4.3 follow Frankle et al. (2020a):
    the maximal increase on the path over the MEAN of the endpoint errors, 0.3 - 0.15; the increase over the larger
    endpoint is only a named option."""
    p = pd.DataFrame(dict(alpha=[0, 0.5, 1], error=[0.1, 0.3, 0.2]))
    assert error_barrier(p) == pytest.approx(0.15, abs=1e-15)
    assert error_barrier(p, baseline="mean") == error_barrier(p) == instability(p)
    assert error_barrier(p, baseline="max") == pytest.approx(0.10, abs=1e-15)
    assert BARRIER_BASELINES == ("mean", "max")
    for bad in ("worst", "Mean", None, 0):
        expect_error(lambda: error_barrier(p, baseline=bad), ValueError, f"baseline={bad!r}", "'mean', 'max'")


def test_barrier_and_instability():
    p = pd.DataFrame(dict(alpha=[0, 0.25, 0.5, 1], error=[0.10, 0.30, 0.40, 0.20]))
    assert error_barrier(p) == pytest.approx(0.25, abs=1e-15) and instability(p) == error_barrier(p)
    assert error_barrier(p, "max") == pytest.approx(0.20, abs=1e-15)
    flat = pd.DataFrame(dict(alpha=[0, 0.5, 1], error=[0.1, 0.05, 0.2]))      # no bump: half the endpoints' gap remains
    assert error_barrier(flat) == pytest.approx(0.05, abs=1e-15) and error_barrier(flat, "max") == 0.0
    same = pd.DataFrame(dict(alpha=[0, 0.5, 1], error=[0.2, 0.35, 0.2]))      # equal endpoints: the baselines agree
    assert error_barrier(same) == error_barrier(same, "max") == pytest.approx(0.15, abs=1e-15)
    expect_error(lambda: error_barrier(p.iloc[:3]), ValueError, "no row at alpha=1")
    expect_error(lambda: instability(p.iloc[1:]), ValueError, "no row at alpha=0")
    expect_error(lambda: error_barrier(p[["alpha"]]), ValueError, "columns alpha, error")
    expect_error(lambda: error_barrier([0.1, 0.2]), ValueError, "path=list")


def test_linear_mode_instability(tmp_outputs, digits):
    net = get_model(**ARCH)
    ticket = Ticket(random_mask(net, 0.3, seed=0), net.state_dict(), ARCH, key="test-ticket")
    misses = STATS["misses"]
    r = linear_mode_instability(ticket, "digits", QUICK, alphas=5)
    assert isinstance(r, Instability) and STATS["misses"] == misses + 2
    assert r.acc == (last_value(r.histories[0]), last_value(r.histories[1]))   # the endpoints are the trained copies
    assert r.instability == instability(r.path) and r.error_barrier == error_barrier(r.path)
    assert r.error_barrier == r.instability and r.error_barrier_max == error_barrier(r.path, "max")
    assert 0 <= r.error_barrier_max <= r.instability and r.seeds == (0, 1)
    expect_error(lambda: Instability(0.05, 0.03, 0.0, r.path, r.acc, r.seeds), ValueError, "error_barrier=0.03", "instability=0.05")
    assert get_mask(r.networks[0]) == ticket.mask and get_mask(r.networks[1]) == ticket.mask
    assert not torch.equal(r.networks[0].fc.weight, r.networks[1].fc.weight)   # different SGD noise
    hits = STATS["hits"]
    again = linear_mode_instability(ticket, "digits", QUICK, alphas=5)
    assert STATS["hits"] == hits + 2
    pd.testing.assert_frame_equal(again.path, r.path)
    mem = linear_mode_instability(Ticket(ticket.mask, ticket.weights, ARCH), digits, QUICK, alphas=5)   # no key: not cached
    pd.testing.assert_frame_equal(mem.path, r.path)                           # splits in memory: the same numbers
    expect_error(lambda: linear_mode_instability(ticket, "digits", QUICK, seeds=(3, 3)), ValueError, "seeds=(3, 3)", "different SGD noise")
    expect_error(lambda: linear_mode_instability(ticket, "digits", QUICK, seeds=(0,)), ValueError, "two integer seeds")
    expect_error(lambda: linear_mode_instability(ticket, "digits", QUICK, bn="none"), ValueError, "bn='none'")
    expect_error(lambda: linear_mode_instability(ticket, "digits", QUICK, alphas=[0, 2]), ValueError, "outside [0, 1]")
