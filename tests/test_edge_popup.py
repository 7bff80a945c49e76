"""paper_repro.edge_popup: exact per-layer top-k masks, the mask as the top-k of the final |scores| (full sort), frozen
weights, Edge-Popup's score gradient sign(s)·w·∂L/∂w_eff, the run cache (hits, resume), finetuning under the mask,
BatchNorm networks, recipes, bad input."""
import pandas as pd
import pytest
import torch
from torch import nn

import paper_repro.edge_popup as ep
from paper_repro.data import load_dataset
from paper_repro.edge_popup import SCORE_INITS, edge_popup
from paper_repro.masks import Mask, keep_count, masked_layers, to_masked
from paper_repro.models import get_model, prunable_weights, same_state
from paper_repro.runs import STATS
from paper_repro.recipes import get_recipe, RECIPES
from paper_repro.train import Callback, evaluate, fit
from paper_repro.tickets import finetune, arch_for


pytestmark = pytest.mark.usefixtures("one_thread", "tmp_outputs")   # every test gets its own run cache


ARCH = arch_for("digits", "lenet-300-100", seed=0, init="signed_constant")
QUICK = get_recipe("ep-cpu", epochs=2, batch_size=128)


def sizes(arch=ARCH):
    return {n: w.numel() for n, w in prunable_weights(get_model(**arch)).items()}


def digits():
    return {"train": load_dataset("digits", "train"), "test": load_dataset("digits", "test")}


def last_test_acc(history):
    return float(history.query("split == 'test' and metric == 'acc'").value.iloc[-1])


# ---------------------------------------------------------------- 1. the mask

@pytest.mark.parametrize("density", [1.0, 0.5, 0.05, 0.0123, 0.001])
def test_mask_keeps_exactly_keep_count_in_every_layer(density):
    t = edge_popup(ARCH, "digits", density, recipe=QUICK, progress=False)
    n = sizes()
    assert list(t.mask) == list(n)                                   # every prunable layer, first and last included
    for name, size in n.items():
        assert t.mask[name].shape == get_model(**ARCH).get_parameter(name).shape
        assert int(t.mask[name].sum()) == keep_count(size, density), name
    assert t.info["kept"] == {name: keep_count(size, density) for name, size in n.items()}
    assert t.info["size"] == n and t.info["density"] == density
    assert t.history.density.iloc[-1] == pytest.approx(t.mask.density)


@pytest.mark.parametrize("density,scores", [(0.3, "kaiming_uniform"), (0.02, "kaiming_uniform"), (0.1, "uniform")])
def test_mask_is_the_top_k_of_the_final_score_magnitudes(density, scores):
    t = edge_popup(ARCH, "digits", density, recipe=QUICK, scores=scores, progress=False)
    final = t.extras["scores"]
    start = {n: l.scores.detach() for n, l in masked_layers(
        to_masked(get_model(**ARCH), rule="topk", density=density, scores=scores, seed=0)).items()}
    assert list(final) == list(t.mask)
    for n, s in final.items():
        k = keep_count(s.numel(), density)
        order = torch.sort(s.abs().flatten(), descending=True, stable=True).indices
        ref = torch.zeros(s.numel(), dtype=torch.bool)
        ref[order[:k]] = True
        assert torch.equal(t.mask[n], ref.view(s.shape)), n
        assert not torch.equal(s, start[n]), n                      # the scores trained
    if scores == "kaiming_uniform":
        assert any((s < 0).any() for s in final.values())            # signed scores: |s| decides, not s


def test_search_is_deterministic_and_seeded():
    a = edge_popup(ARCH, "digits", 0.1, recipe=QUICK, cache=False, progress=False)
    b = edge_popup(ARCH, digits(), 0.1, recipe=QUICK, progress=False)   # splits: not cacheable, same computation
    assert a.key is None and b.key is None
    assert a.mask == b.mask
    pd.testing.assert_frame_equal(a.history.drop(columns="time"), b.history.drop(columns="time"))
    c = edge_popup(ARCH, "digits", 0.1, recipe=QUICK, seed=1, cache=False, progress=False)
    assert c.mask != a.mask


# ---------------------------------------------------------------- 2. the weights never train

@pytest.mark.parametrize("density", [0.5, 0.02])
def test_weights_are_the_initialisation(density):
    t = edge_popup(ARCH, "digits", density, recipe=QUICK, progress=False)
    init = get_model(**ARCH).state_dict()
    assert set(t.weights) == set(init)                               # the plain architecture's keys, no mask/scores
    for k, v in init.items():
        assert torch.equal(t.weights[k], v), k                       # all of them, pruned weights and biases included


def test_model_defaults_signed_constant_and_the_seed():
    bare = {k: v for k, v in ARCH.items() if k not in ("init", "seed")}
    t = edge_popup(bare, "digits", 0.2, recipe=QUICK, seed=3, progress=False)
    assert t.arch["init"] == "signed_constant" and t.arch["seed"] == 3
    w = t.weights["hidden.0.weight"]
    u = w.abs().unique()
    assert len(u) == 1 and u.item() == pytest.approx((2 / 64) ** 0.5)   # ±√(2/fan_in), fan_in = 8·8
    assert 0.4 < float((w > 0).float().mean()) < 0.6
    assert same_state(t.weights, get_model(**dict(ARCH, seed=3)))


def test_ticket_network_reproduces_the_pre_finetune_accuracy():
    t = edge_popup(ARCH, "digits", 0.5, recipe=get_recipe("ep-cpu", epochs=5, batch_size=32), progress=False)
    acc = evaluate(t.network(), load_dataset("digits", "test"))["acc"]
    assert acc == t.info["test_acc"] == last_test_acc(t.history)
    assert acc > 0.9                                                  # chance is 0.1: the search works


def test_batchnorm_network_keeps_its_search_statistics():
    arch = arch_for("digits", "resnet20", width=0.25, seed=0, init="signed_constant", shortcut="A",
                     affine_bn=False, bias=False, fc_as_conv=True)
    t = edge_popup(arch, "digits", 0.2, recipe=get_recipe("ep-cpu", epochs=1, batch_size=128), progress=False)
    init = get_model(**arch).state_dict()
    assert set(t.weights) == set(init)
    for k, v in init.items():
        if "running" in k or "num_batches" in k: assert not torch.equal(t.weights[k], v), k   # updated by the search
        else: assert torch.equal(t.weights[k], v), k                                          # frozen
    for n, size in sizes(arch).items(): assert int(t.mask[n].sum()) == keep_count(size, 0.2), n
    assert evaluate(t.network(), load_dataset("digits", "test"))["acc"] == t.info["test_acc"]


# ---------------------------------------------------------------- 3. the gradient

@pytest.mark.parametrize("seed", [0, 1])
def test_score_gradient_is_sign_s_times_w_times_grad_of_effective_weight(seed):
    g = torch.Generator().manual_seed(seed)
    net = to_masked(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), rule="topk", density=0.4,
                    scores="kaiming_uniform", seed=seed)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    torch.nn.functional.cross_entropy(net(x), y).backward()     # the engine's estimator, as edge_popup trains
    # reference: the same loss as a function of w_eff = w ⊙ m, differentiated by autograd
    layers = list(masked_layers(net).values())
    w_eff = [(l.weight * l.current_mask()).detach().requires_grad_() for l in layers]
    h1 = torch.relu(x @ w_eff[0].T + layers[0].bias)
    torch.nn.functional.cross_entropy(h1 @ w_eff[1].T + layers[1].bias, y).backward()
    for l, we in zip(layers, w_eff):
        s = l.scores.detach()
        assert (s < 0).any() and (l.scores.grad != 0).any()
        torch.testing.assert_close(l.scores.grad, s.sign() * l.weight.detach() * we.grad)


def test_hooks_are_removed_after_the_search(monkeypatch):
    seen = []
    real = ep.fit
    def spy(model, *a, **k):
        seen.append(model)
        return real(model, *a, **k)
    monkeypatch.setattr(ep, "fit", spy)
    edge_popup(ARCH, "digits", 0.1, recipe=QUICK, cache=False, progress=False)
    (net,) = seen
    assert all(not l.scores._backward_hooks for l in masked_layers(net).values())


# ---------------------------------------------------------------- 4. the run cache

def test_second_call_loads_the_cached_run(monkeypatch):
    calls = []
    real = ep.fit
    monkeypatch.setattr(ep, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    hits = STATS["hits"]
    a = edge_popup(ARCH, "digits", 0.05, recipe=QUICK, progress=False)
    b = edge_popup(ARCH, "digits", 0.05, recipe=QUICK, progress=False)
    assert len(calls) == 1 and STATS["hits"] == hits + 1
    assert a.key == b.key and a.key.startswith("edge_popup-")
    assert a.mask == b.mask and same_state(a.weights, b.weights) and a.info == b.info and a.arch == b.arch
    pd.testing.assert_frame_equal(a.history, b.history)
    c = edge_popup(ARCH, "digits", 0.05, recipe=QUICK.replace(lr=QUICK.lr / 2), progress=False)   # any change: another run
    assert len(calls) == 2 and c.key != a.key
    d = edge_popup(ARCH, "digits", 0.05, recipe=QUICK, cache=False, progress=False)
    assert len(calls) == 3 and d.key is None and d.mask == a.mask


def test_killed_search_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path):
    class Kill(Callback):
        def on_step(self, s):
            if s.iteration == s.iterations_per_epoch + 3: raise KeyboardInterrupt
    real = ep.fit
    monkeypatch.setattr(ep, "fit", lambda *a, **k: real(*a, callbacks=[Kill()], **k))
    recipe = QUICK.replace(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        edge_popup(ARCH, "digits", 0.1, recipe=recipe, progress=False)
    monkeypatch.setattr(ep, "fit", real)
    resumed = edge_popup(ARCH, "digits", 0.1, recipe=recipe, progress=False)
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path/"fresh"))
    fresh = edge_popup(ARCH, "digits", 0.1, recipe=recipe, progress=False)
    assert resumed.key == fresh.key and resumed.mask == fresh.mask
    pd.testing.assert_frame_equal(resumed.history.drop(columns="time"), fresh.history.drop(columns="time"))
    for n, s in fresh.extras["scores"].items():
        assert torch.equal(s, resumed.extras["scores"][n]), n


# ---------------------------------------------------------------- 5. finetuning

def test_finetune_keeps_the_mask_exactly_and_is_cached():
    t = edge_popup(ARCH, "digits", 0.05, recipe=QUICK, progress=False)
    recipe = get_recipe("cpu", epochs=2, batch_size=64)
    trained, hist = finetune(t, "digits", recipe, progress=False)
    assert Mask.from_weights(trained) == t.mask
    for n, w in trained.named_parameters():
        if n in t.mask: assert (w[~t.mask[n]] == 0).all(), n
    assert not same_state(trained, t.network())                       # the kept weights trained
    hits = STATS["hits"]
    again, hist2 = finetune(t, "digits", recipe, progress=False)
    assert STATS["hits"] == hits + 1 and same_state(again, trained)
    pd.testing.assert_frame_equal(hist, hist2)


# ---------------------------------------------------------------- 6. recipes

def test_recipes_follow_the_official_code():
    r = RECIPES["ep-resnet20"]
    assert (r.optimizer, r.lr, r.schedule, r.momentum, r.nesterov, r.batch_size, r.epochs, r.weight_decay, r.trains) == \
        ("sgd", 0.1, "cosine", 0.9, False, 256, 150, 5e-4, "scores")
    assert (r.crop, r.flip) == (4, True)
    f = RECIPES["ep-resnet20-finetune"]
    assert (f.optimizer, f.lr, f.schedule, f.momentum, f.epochs, f.trains) == ("sgd", 0.1, "cosine", 0.9, 150, "weights")
    assert RECIPES["ep-cpu"].trains == "scores"


# ---------------------------------------------------------------- 7. bad input

@pytest.mark.parametrize("density,message", [(0, "density=0"), (-0.1, "density=-0.1"), (1.5, "density=1.5"),
                                             (True, "density=True"), ("0.1", "density='0.1'"),
                                             (0.0004, "'fc.weight'")])
def test_bad_density(density, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        edge_popup(ARCH, "digits", density, recipe=QUICK, progress=False)


@pytest.mark.parametrize("kwargs,message", [
    (dict(scores="normal"), "scores='normal'"), (dict(scores="uniform ", ), "scores='uniform '"),
    (dict(recipe="cpu"), "trains='weights'"), (dict(recipe="ep-fast"), "'ep-fast'"),
    (dict(arch="lenet-300-100"), "arch='lenet-300-100'"), (dict(arch=dict(ARCH, seed=None)), r"arch\['seed'\]=None"),
    (dict(arch=dict(ARCH, name="lenet-5")), "unknown model 'lenet-5'"),
])
def test_bad_input(kwargs, message):
    args = dict(arch=ARCH, data="digits", density=0.1, recipe=QUICK, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        edge_popup(**args)
    assert set(SCORE_INITS) == {"kaiming_uniform", "uniform"}


def test_uncached_ticket_keeps_its_scores_too():
    t = edge_popup(ARCH, "digits", 0.1, recipe=QUICK, cache=False, progress=False)
    assert t.key is None and list(t.extras["scores"]) == list(t.mask)


def test_empty_layer_error_leaves_no_run_behind(tmp_outputs):
    with pytest.raises(ValueError, match="no weight"):
        edge_popup(ARCH, "digits", 0.0004, recipe=QUICK, progress=False)
    assert not (tmp_outputs/"runs").exists() or not any((tmp_outputs/"runs").iterdir())


# ---------------------------------------------------------------- 8. Fashion-MNIST (slow)

@pytest.mark.slow
def test_fashion_mnist_sparse_regime():
    """ep-cpu at 5% density with scaled signed-constant weights finds a useful subnetwork of random LeNet-300-100."""
    arch = arch_for("fashion-mnist", "lenet-300-100", seed=0, init="signed_constant", init_density=0.05)
    t = edge_popup(arch, "fashion-mnist", 0.05, progress=False)
    assert t.info["test_acc"] > 0.8
