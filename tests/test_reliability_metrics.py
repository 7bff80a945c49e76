"""Issue #24 (reliability), metrics and parameter checks: every metric and pruning function refuses a NaN or an
infinity in its input with a ValueError naming that input (connectivity, sanity, rti, asni, baselines); the ASNI
schedule has no overflow (every gamma > 0 is a schedule); bad notebook parameters (a figure's own rules included) exit
2 before papermill or any kernel starts, from `paper-repro run`, `paper-repro check` and `make repro`."""
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from paper_repro import cli
from paper_repro.asni import ASNISpec, asni_prune, asni_variants, centroid_init, centroids, pruning_plan, sigmoid_schedule
from paper_repro.baselines import small_dense, smart_ratio
from paper_repro.connectivity import (angular_distance, cosine_distance, distance_matrix, error_barrier, euclidean_distance,
                                      instability, interpolate, interpolated, masked_vectors)
from paper_repro.core import expect_error
from paper_repro.data import load_dataset
from paper_repro.masks import Mask, apply_mask
from paper_repro.models import get_model
from paper_repro.rti import Optima, Repulsion, RTISpec, pruning_threshold, remaining_weights
from paper_repro.sanity import correlation_indicator, invert_check, jackpot_conditions, lt_advantage
from paper_repro.tickets import Ticket, arch_for

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def with_nan(t: torch.Tensor, value=NAN, at=0) -> torch.Tensor:
    t = t.clone().float(); t.view(-1)[at] = value
    return t


# --- connectivity -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distance", [angular_distance, cosine_distance, euclidean_distance])
def test_distances_refuse_a_nan_naming_the_side_and_the_tensor(distance):
    a, b = {"w": torch.randn(5), "v": torch.randn(3)}, {"w": torch.randn(5), "v": torch.randn(3)}
    expect_error(lambda: distance(a, dict(b, v=with_nan(b["v"]))), ValueError, "b['v']", "1 non-finite of 3")
    expect_error(lambda: distance(dict(a, w=with_nan(a["w"], INF)), b), ValueError, "a['w']", "inf")
    expect_error(lambda: masked_vectors(with_nan(torch.ones(4)), torch.ones(4)), ValueError, "a['tensor']")
    keep = {"w": torch.tensor([False, True, True, True, True]), "v": torch.ones(3, dtype=torch.bool)}
    assert math.isfinite(distance(dict(a, w=with_nan(a["w"])), b, keep))     # outside the mask: not compared


def test_distance_matrix_names_the_round_with_a_nan():
    net = get_model(**arch_for("digits", "lenet-300-100", seed=0))
    w = {n: p.detach().clone() for n, p in net.state_dict().items()}
    mask = Mask.ones(net)
    bad = dict(w, **{"fc.weight": with_nan(w["fc.weight"], at=7)})
    expect_error(lambda: distance_matrix([(w, mask), (bad, mask)]), ValueError, "rounds[1]", "'fc.weight'", "non-finite")
    expect_error(lambda: distance_matrix([(w, mask), (w, mask)], init=bad), ValueError, "init:", "'fc.weight'")


def test_error_barrier_refuses_a_nan_on_the_path():
    """It used to skip the NaN (pandas' max) and return 0.0 for this flat path."""
    path = pd.DataFrame(dict(alpha=[0, 0.5, 1], error=[0.1, NAN, 0.1]))
    for f in (error_barrier, instability, lambda p: error_barrier(p, "max")):
        expect_error(lambda: f(path), ValueError, "path['error']", "1 non-finite of 3")
    expect_error(lambda: error_barrier(path.assign(error=[0.1, 0.2, 0.1], alpha=[0, INF, 1])), ValueError, "path['alpha']")


def test_interpolate_refuses_non_finite_ends_and_results():
    a, b = (get_model(**arch_for("digits", "lenet-300-100", seed=s)) for s in (0, 1))
    test = load_dataset("digits", "test")
    with torch.no_grad(): b.fc.bias[1] = NAN
    expect_error(lambda: interpolate(a, b, test, alphas=3), ValueError, "model_b['fc.bias']", "non-finite")
    expect_error(lambda: interpolated(b, a, 0.5), ValueError, "model_a['fc.bias']")
    with torch.no_grad(): b.fc.bias[1] = 1e38; b.fc.weight.mul_(1e38)    # finite ends, infinite logits on the way
    expect_error(lambda: interpolate(a, b, test, alphas=3), ValueError, "the path['loss']", "non-finite")


# --- sanity -------------------------------------------------------------------------------------------------------------

def test_correlation_indicator_refuses_nan_weights():
    """It used to return 0.0 (or a number) on NaN weights."""
    g = torch.Generator().manual_seed(0)
    a = {"l1": torch.randn(20, 10, generator=g), "l2": torch.randn(30, generator=g)}
    b = {n: torch.randn(t.shape, generator=g) for n, t in a.items()}
    expect_error(lambda: correlation_indicator(a, {n: t*NAN for n, t in b.items()}, 0.2), ValueError, "theta_b['l1']", "non-finite")
    expect_error(lambda: correlation_indicator(dict(a, l2=with_nan(a["l2"], INF)), b, 0.2), ValueError, "theta_a['l2']", "1 non-finite of 30")
    m = {n: torch.ones(t.shape, dtype=torch.bool) for n, t in a.items()}; m["l2"][0] = False
    assert 0 <= correlation_indicator(dict(a, l2=with_nan(a["l2"])), b, 0.2, mask=m) <= 1    # the NaN is pruned: not read


def test_sanity_checks_refuse_non_finite_scores_and_accuracies():
    net = get_model(**arch_for("digits", "lenet-300-100", seed=0))
    mask = Mask.ones(net)
    scores = {n: torch.rand(t.shape) for n, t in mask.items()}
    ticket = Ticket(mask, net.state_dict(), arch_for("digits", "lenet-300-100", seed=0), extras=dict(scores=scores))
    bad = dict(scores, **{"fc.weight": with_nan(scores["fc.weight"])})
    expect_error(lambda: invert_check(ticket, scores=bad), ValueError, "scores['fc.weight']", "non-finite")
    table = pd.DataFrame(dict(variant=["dense", "LT-IMP", "RR-IMP"], nominal=[1.0, 0.5, 0.5], lr=[0.1]*3, acc=[0.9, NAN, 0.8]))
    expect_error(lambda: jackpot_conditions(table), ValueError, "table.acc", "1 non-finite of 3")
    expect_error(lambda: lt_advantage(table), ValueError, "table.acc")


# --- rti ----------------------------------------------------------------------------------------------------------------

def test_optima_are_checked_once_when_stored():
    store = Optima([torch.ones(3, dtype=torch.bool), torch.tensor([True, False])])
    expect_error(lambda: store.add([with_nan(torch.ones(3)), torch.ones(2)], "round 3's trained weights"), ValueError,
                 "round 3's trained weights has 1 non-finite of 4 entries")
    assert len(store) == 0
    store.add([torch.ones(3), torch.tensor([1.0, INF])])          # the inf is outside the mask: not stored
    assert len(store) == 1 and torch.isfinite(store.matrix("cpu")).all()


def test_repulsion_names_the_round_whose_optimum_is_not_finite():
    net = get_model(**arch_for("digits", "lenet-300-100", seed=0))
    mask = Mask.ones(net)
    good = {n: p.detach().clone() for n, p in net.state_dict().items()}
    bad = dict(good, **{"fc.weight": with_nan(good["fc.weight"])})
    expect_error(lambda: Repulsion(2.0)(2, mask, lambda k: bad if k == 1 else good), ValueError, "round 1's trained weights", "non-finite")


def test_the_repulsion_loss_does_not_check_per_step(monkeypatch):
    """The per-step loss reads the checked store: it calls check_finite never (no host sync per step on CUDA)."""
    import paper_repro.rti as rti
    net = get_model(**arch_for("digits", "lenet-300-100", seed=0))
    mask = Mask.ones(net)
    state = {n: p.detach().clone() for n, p in net.state_dict().items()}
    loss = Repulsion(2.0)(1, mask, lambda k: state)
    calls = []
    monkeypatch.setattr(rti, "check_finite", lambda *a, **k: calls.append(a) or a[0])
    for _ in range(3): loss(net).backward()
    assert calls == []


def test_remaining_weights_and_thresholds_refuse_nan():
    w = {"a": torch.tensor([1., NAN, 3.]), "b": torch.tensor([INF, 2.])}
    m = Mask({"a": torch.tensor([True, True, True]), "b": torch.tensor([False, True])})
    expect_error(lambda: remaining_weights(w, m), ValueError, "weights['a']", "1 non-finite of 3")
    expect_error(lambda: pruning_threshold(w, m, 0.2), ValueError, "weights['a']")
    ok = Mask({"a": torch.tensor([True, False, True]), "b": torch.tensor([False, True])})
    assert pruning_threshold(w, ok, 0.4) == 1.0                    # NaN and inf pruned: not read


# --- baselines ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, names", [
    (lambda: smart_ratio([100, 50, 10], NAN), "density=nan"),
    (lambda: smart_ratio([100, 50, 10], INF), "density=inf"),
    (lambda: smart_ratio([100, 50, 10], 0.5, linear_keep=NAN), "linear_keep=nan"),
    (lambda: smart_ratio([100, NAN, 10], 0.5), "layer_sizes[1]=nan"),
    (lambda: smart_ratio([100, INF, 10], 0.5), "layer_sizes[1]=inf"),
    (lambda: small_dense("lenet-300-100", NAN), "density=nan"),
])
def test_smart_ratio_and_small_dense_refuse_non_finite_numbers(call, names):
    """Smart-Ratio reads only the layer sizes (integers) and two fractions: those are what can be non-finite."""
    expect_error(call, ValueError, names)


# --- asni ---------------------------------------------------------------------------------------------------------------

def masked_linear(values) -> nn.Module:
    net = nn.Sequential(nn.Linear(len(values), 1, bias=False))
    with torch.no_grad(): net[0].weight.copy_(torch.tensor([values]))
    return apply_mask(net, Mask.ones(net))


def test_asni_prune_and_centroids_refuse_nan_weights():
    net = masked_linear([1., NAN, -3., 4.])
    expect_error(lambda: asni_prune(net, 50), ValueError, "model['0.weight']", "1 non-finite of 4")
    expect_error(lambda: centroids(net), ValueError, "model['0.weight']")
    expect_error(lambda: centroid_init(net), ValueError, "model['0.weight']")


def test_centroid_init_refuses_a_non_finite_centroid_it_would_use():
    net = masked_linear([1., 2., -3., 0.])
    table = centroids(net)
    expect_error(lambda: centroid_init(net, table.assign(c_minus=[NAN])), ValueError, "table['c_minus']", "'0.weight'", "nan")
    pos = masked_linear([1., 2., 0., 0.])
    t = centroids(pos); assert math.isnan(t.c_minus[0])          # no negative weight: NaN, and not needed
    centroid_init(pos, t)
    assert pos[0].weight.flatten().tolist() == [1.5, 1.5, 0., 0.]


def test_sigmoid_schedule_has_no_overflow():
    """gamma=1e-300 raised OverflowError; every gamma > 0 is now a schedule (a step at beta*E as gamma -> 0), and the
    paper's form is kept bit for bit where it does not overflow (cached plans unchanged)."""
    assert [sigmoid_schedule(e, 10, 98, 0.5, 1e-300) for e in range(1, 11)] == [0.0]*4 + [49.0] + [98.0]*5
    assert pruning_plan(50, 98, 0.5, 0.01)[0] == 0.0                                   # exp(2400) would overflow
    for g in (1e-300, 1e-3, 0.05, 1.0, 1e6, 1e300):
        plan = pruning_plan(90, 81.04, 0.5, g)
        assert all(0 <= p <= 81.04 for p in plan) and plan == sorted(plan)
    assert all(sigmoid_schedule(e, 90, 81.04, 0.5, 10) == 81.04/(1 + math.exp(-(e - 45)/10)) for e in range(91))
    for bad, msg in ((0.0, "gamma=0.0"), (-1e-300, "gamma=-1e-300"), (NAN, "gamma=nan"), (INF, "gamma=inf")):
        expect_error(lambda: sigmoid_schedule(1, 10, 98, 0.5, bad), ValueError, msg, "> 0")
    expect_error(lambda: sigmoid_schedule(1, 10, NAN, 0.5, 1), ValueError, "alpha=nan", "(0, 100)")
    expect_error(lambda: sigmoid_schedule(1, 10, 98, INF, 1), ValueError, "beta=inf", "[0, 1]")


def test_asni_seeds_must_be_seed_everythings():
    for bad in ([-1], [2**32], [0, -5]):
        expect_error(lambda: ASNISpec.fill("asni_fig2", "smoke", seeds=bad), ValueError, f"seeds={bad!r}", "[0, 2**32)")
        expect_error(lambda: asni_variants(arch_for("digits", "lenet-300-100"), "digits", 90, 0.5, 1, "cpu", seeds=bad),
                     ValueError, "[0, 2**32)")
    assert ASNISpec.fill("asni_fig2", "smoke", seeds=[0, 2**32 - 1]).seeds == [0, 2**32 - 1]


# --- parameters checked before a kernel ---------------------------------------------------------------------------------

BAD = [
    (("fig3", "-p", "lam", "-1"), "lam=-1.0"),
    (("fig3", "-p", "density", "0"), "density=0"),
    (("fig3", "-p", "batch_size", "0"), "unknown parameter 'batch_size'"),
    (("fig1", "-p", "network", "nosuch"), "network='nosuch'"),
    (("rti_fig2", "-p", "instability_rounds", "99"), "instability_rounds=[99]"),
    (("rti_fig5", "-p", "histogram_round", "0"), "histogram_round=0"),
    (("rti_fig8", "-p", "rounds", "1"), "rounds=1"),
    (("asni_fig2", "-p", "seeds", "-1"), "seeds=[-1]"),
]


@pytest.fixture
def no_kernel(monkeypatch):
    """papermill's execute_notebook, replaced: a test fails if anything would start a kernel."""
    import papermill
    started = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: started.append(a) or pytest.fail("papermill was called"))
    return started


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("argv, message", BAD)
def test_bad_parameters_exit_2_before_papermill(capsys, no_kernel, command, argv, message):
    t0 = time.perf_counter()
    code = cli.main([command, *argv])
    out, err = capsys.readouterr()
    assert code == 2 and no_kernel == [] and out == "", (code, out, err)
    assert f"paper-repro {command}: error: {argv[0]}: " in err and message in err, err
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("notebook, rule", [("rti_fig2", "0 … 15"), ("rti_fig5", "1 … 15"), ("rti_fig8", "rounds >= 2"),
                                            ("asni_fig2", "[0, 2**32)"), ("fig3", "a number >= 0")])
def test_the_message_says_what_is_allowed(capsys, notebook, rule):
    argv = next(a for a, _ in BAD if a[0] == notebook)
    assert cli.main(["check", *argv]) == 2
    assert rule in capsys.readouterr().err


def test_check_is_silent_when_fine_and_takes_make_repros_arguments(capsys, no_kernel):
    names = cli.experiment_notebooks()
    assert cli.main(["check", *names, "-p", "executor", "serial"]) == 0
    assert cli.main(["check", "fig3", "--preset", "smoke", "-p", "lam", "1.5e-5", "--log-level", "INFO"]) == 0
    assert cli.main(["check", "rti_fig8", "-p", "rounds=2", "paths=[0]"]) == 0
    assert capsys.readouterr() == ("", "") and no_kernel == []
    assert cli.main(["check", "fig3", "-p", "executor", "slurm"]) == 2 and "executor='slurm'" in capsys.readouterr().err
    assert cli.main(["check"]) == 2                                      # a notebook is required
    assert cli.main(["run", "fig3", "--log-level", "INFO"]) == 2         # only check leaves options to papermill
    assert "unrecognized arguments: --log-level INFO" in capsys.readouterr().err


def test_the_notebooks_own_checks_agree_with_the_spec():
    """The figures' cells still check (redundant, harmless); the spec refuses exactly what they would."""
    expect_error(lambda: RTISpec.fill("rti_fig2", "smoke", instability_rounds=[4]), ValueError, "instability_rounds=[4]", "0 … 3")
    RTISpec.fill("rti_fig2", "smoke", instability_rounds=[0, 3])
    expect_error(lambda: RTISpec.fill("rti_fig5", "smoke", histogram_round=4), ValueError, "histogram_round=4", "1 … 3")
    RTISpec.fill("rti_fig5", "smoke", histogram_round=1)
    expect_error(lambda: RTISpec.fill("rti_fig8", "smoke", paths=[-1]), ValueError, "paths=[-1]", "0 … 2")
    RTISpec.fill("rti_fig8", "smoke", rounds=2, paths=[0])
    RTISpec.fill("rti_fig1", "smoke", rounds=1, histogram_round=5, instability_rounds=[9])   # not rti_fig1's knobs' rules


def make(*args, timeout=120):
    """make in the checkout with this venv; EXPERIMENTS given, so make does not import the library to list them."""
    venv = Path(sys.prefix)
    return subprocess.run(["make", "--no-print-directory", *args, f"VENV={venv}", "EXPERIMENTS=fig3 rti_fig2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.heavy
def test_make_repro_checks_before_the_data_and_papermill():
    r = make("-n", "repro", "NB=fig3", "ARGS=-p lam -1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    check = next(i for i, l in enumerate(lines) if "paper-repro check fig3 -p executor serial -p lam -1" in l)
    data = next(i for i, l in enumerate(lines) if "ensure_dataset" in l)
    papermill = next(i for i, l in enumerate(lines) if "/papermill " in l)
    assert check < data < papermill
    r = make("-n", "repro", "ARGS=-p seeds [0]")                         # every notebook: one check call for all of them
    assert "paper-repro check fig3 rti_fig2 -p executor serial -p seeds [0]" in r.stdout, r.stdout


@pytest.mark.heavy
@pytest.mark.slow    # ~10 s of process starts on 2 cores; test_make_repro_checks_before_the_data_and_papermill covers the order
def test_make_repro_with_a_bad_parameter_exits_2_before_any_kernel(tmp_path):
    """The real target (the install step taken as done: -o its stamp): the check fails, nothing else runs."""
    stamp = Path(sys.prefix) / ".installed"
    if not (Path(sys.prefix) / "bin" / "paper-repro").exists() or not stamp.exists():
        pytest.skip("needs the project's venv with its paper-repro script")
    t0 = time.perf_counter()
    r = make("-o", str(stamp), "repro", "NB=fig3", "ARGS=-p lam -1", f"PAPER_REPRO_OUTPUTS={tmp_path}")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "paper-repro check: error: fig3: lam=-1.0" in r.stderr
    assert "papermill" not in r.stdout and "ensure_dataset" not in r.stdout and not (tmp_path / "fig3").exists()
    assert time.perf_counter() - t0 < 30
