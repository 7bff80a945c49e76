"""Reliability of masks and optimizers (issue #24): non-binary masks are refused (in `Mask`, `to_masked`/`apply_mask`,
`fit(mask=)`, an edited mask buffer, the optimizers' masks); `Mask` of a non-mapping is a TypeError; the mask buffer
is the single source of truth (an in-place edit, `zero_()`, an assigned tensor or a loaded state is what the next
forward computes with, and the optimizers zero the state of newly pruned entries); magnitude pruning and
`Mask.from_weights` refuse non-finite weights; `MaskedAdamW` is `torch.optim.AdamW` with a mask, and recipes can ask
for it without changing any existing recipe's `to_dict`."""
import copy
import hashlib
import io
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paper_repro.core import interleaved
from paper_repro.data import load_dataset
from paper_repro.masks import (Mask, MaskedLinear, apply_mask, check_binary, enforce_masks, get_mask,
                               keep_masks, magnitude, masked_layers, random_mask, to_masked, to_plain, weights_of)
from paper_repro.models import get_model, prunable_weights
from paper_repro.optim import MaskedAdam, MaskedAdamW, MaskedSGD, make_optimizer
from paper_repro.recipes import OPTIMIZERS, RECIPES, Recipe
from paper_repro.train import fit, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

BINARY_MSG = "a mask holds 0 (pruned) or 1 (kept)"


def lenet(seed=0):
    return get_model("lenet-300-100", in_channels=1, input_size=8, seed=seed)


def tiny_conv(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def plain_output(model, x, mask):
    "The output of the plain architecture holding the model's current weights times `mask` (name -> tensor)."
    plain = to_plain_unsynced(copy.deepcopy(model))          # deepcopy does not sync: the weights as they are
    with torch.no_grad():
        for n, w in prunable_weights(plain).items():
            if n in mask: w.mul_(mask[n].to(w.dtype))
    return plain(x)


def to_plain_unsynced(model):
    "Plain layers holding the weights exactly as they are (no mask applied), for a reference computed by hand."
    for layer in masked_layers(model).values():
        del layer._buffers["mask"]
        if "scores" in layer._parameters: del layer._parameters["scores"]
        for a in ("rule", "keep", "weight_name", "_synced"): layer.__dict__.pop(a, None)
        layer.__class__ = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    return model


# ---------------------------------------------------------------- 1, 2. non-binary masks and non-mappings are refused

@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan"), float("inf")], ids=repr)
def test_mask_refuses_non_binary_values(bad):
    with pytest.raises(ValueError) as e:
        Mask({"fc.weight": torch.tensor([1.0, 0.0, bad])})
    msg = str(e.value)
    assert "'fc.weight'" in msg and repr(bad) in msg and BINARY_MSG in msg


def test_mask_refuses_non_binary_integers():
    with pytest.raises(ValueError, match="'a' holds 3"):
        Mask({"a": torch.tensor([0, 1, 3])})


@pytest.mark.parametrize("t", [torch.tensor([True, False]), torch.tensor([1.0, 0.0]), torch.tensor([1, 0]),
                               torch.tensor([1.0, 0.0], dtype=torch.float16), [1, 0]], ids=["bool", "float", "int", "half", "list"])
def test_mask_accepts_binary(t):
    m = Mask({"a": t})
    assert m["a"].dtype == torch.bool and m["a"].tolist() == [True, False]


def test_check_binary_bool_fast_path_and_nan():
    t = torch.tensor([True, False])
    assert check_binary(t) is t
    with pytest.raises(ValueError, match="holds nan"):
        check_binary(torch.tensor([0.0, float("nan")]), "mask tensor 'x'")


@pytest.mark.parametrize("bad", [[torch.ones(3)], torch.ones(3), None, "fc.weight", 3], ids=["list", "tensor", "None", "str", "int"])
def test_mask_of_a_non_mapping_is_a_type_error(bad):
    with pytest.raises(TypeError) as e:
        Mask(bad)
    msg = str(e.value)
    assert "mapping name -> bool tensor" in msg and "Mask.ones(model)" in msg and "get_mask(model)" in msg
    assert type(bad).__name__ in msg


@pytest.mark.parametrize("rule", ["fixed", "round"])
def test_to_masked_and_apply_mask_refuse_non_binary_before_changing_anything(rule):
    model = lenet()
    before = copy.deepcopy(model.state_dict())
    bad = {n: torch.ones_like(w) for n, w in prunable_weights(model).items()}
    bad["hidden.1.weight"] = 0.5 * bad["hidden.1.weight"]
    with pytest.raises(ValueError) as e:
        (apply_mask(model, bad) if rule == "fixed" else to_masked(model, bad, rule=rule))
    assert "mask tensor 'hidden.1.weight' holds 0.5" in str(e.value) and BINARY_MSG in str(e.value)
    assert not masked_layers(model)                                                  # no layer was converted
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())     # nor any weight scaled


def test_apply_mask_on_a_masked_model_refuses_non_binary_and_keeps_the_old_mask():
    model = apply_mask(lenet(), random_mask(lenet(), 0.5, seed=0))
    old = get_mask(model)
    with pytest.raises(ValueError, match="'fc.weight' holds 2.0"):
        apply_mask(model, {**old.state_dict(), "fc.weight": 2 * old["fc.weight"].float()})
    assert get_mask(model) == old


def test_fit_refuses_a_non_binary_mask():
    model = lenet()
    data = {"train": load_dataset("digits", "train"), "test": load_dataset("digits", "test")}
    mask = {"fc.weight": torch.full((10, 100), 0.5)}
    with pytest.raises(ValueError, match=r"mask tensor 'fc.weight' holds 0.5.*a mask holds 0 \(pruned\) or 1 \(kept\)"):
        fit(model, data, Recipe(epochs=1, lr=0.01), mask=mask, device="cpu", progress=False)


def test_optimizers_refuse_non_binary_masks_given_or_edited():
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="masks: the mask of a parameter of shape .3,. holds 0.5"):
        MaskedSGD([w], lr=0.1, masks={w: torch.tensor([1.0, 0.5, 0.0])})
    m = torch.tensor([1.0, 1.0, 0.0])
    opt = MaskedAdam([w], lr=0.1, masks={w: m})
    m[1] = 0.25                                                          # edited in place after the optimizer was made
    w.grad = torch.ones(3)
    with pytest.raises(ValueError, match="holds 0.25"):
        opt.step()


# ---------------------------------------------------------------- 3. the mask buffer is the single source of truth

def _edit_inplace(layer, new): layer.mask.copy_(new)          # noqa: E704  (the same as layer.mask[i] = 0 for each entry)
def _edit_setitem(layer, new):
    idx = (new == 0).nonzero(as_tuple=True)
    layer.mask[idx] = 0
def _edit_zero(layer, new): layer.mask.zero_()                # noqa: E704
def _edit_assign(layer, new): layer.mask = new.clone()        # noqa: E704
def _edit_assign_bool(layer, new): layer.mask = new.bool()    # noqa: E704


EDITS = {"copy_": _edit_inplace, "setitem": _edit_setitem, "zero_": _edit_zero, "assign": _edit_assign,
         "assign_bool": _edit_assign_bool}


def _new_masks(model, kind, seed=1):
    "name -> the mask after the edit: a random half of the current mask (all zeros for zero_)."
    cur = get_mask(model)
    smaller = cur & random_mask(model, 0.5, seed=seed)
    return {n: torch.zeros_like(cur[n]) if kind == "zero_" else smaller[n] for n in cur}


@pytest.mark.parametrize("build", [lenet, tiny_conv], ids=["linear", "conv"])
@pytest.mark.parametrize("kind", list(EDITS))
def test_an_edited_mask_is_what_the_next_forward_computes_with(kind, build):
    model = apply_mask(build(), random_mask(build(), 0.5, seed=0))
    x, _ = batch()
    new = _new_masks(model, kind)
    reference = plain_output(model, x, new)                  # the plain model holding w ⊙ new mask
    buffers = {n: layer.mask for n, layer in masked_layers(model).items()}
    for n, layer in masked_layers(model).items(): EDITS[kind](layer, new[n].to(layer.mask.dtype))
    out = model(x)
    assert torch.equal(out, reference)
    for n, layer in masked_layers(model).items():
        assert layer.mask is buffers[n]                      # an assignment is copied into the buffer: the same tensor
        assert (layer.weight[~new[n]] == 0).all(), n         # the pruned weights are exactly 0
    assert get_mask(model) == Mask(new)


@pytest.mark.parametrize("recipe", [Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4),
                                    Recipe(optimizer="adam", lr=1e-3, weight_decay=1e-4),
                                    Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.1)], ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("kind", ["setitem", "zero_", "assign"])
def test_the_optimizer_state_of_newly_pruned_entries_is_zero_after_a_step(kind, recipe):
    model = apply_mask(lenet(), random_mask(lenet(), 0.5, seed=0))
    opt = make_optimizer(model, recipe)
    step = train_step(model, opt)
    for s in range(3): step(*batch(seed=s))                 # state builds up at the kept entries
    new = _new_masks(model, kind)
    newly = {n: get_mask(model)[n] & ~new[n] for n in new}
    weights = prunable_weights(model)
    assert any((v[newly[n]] != 0).any() for n, w in weights.items() for v in opt.state[w].values() if v.shape == w.shape)
    for n, layer in masked_layers(model).items(): EDITS[kind](layer, new[n].to(layer.mask.dtype))
    step(*batch(seed=9))
    for n, w in weights.items():
        assert (w[~new[n]] == 0).all(), n
        for k, v in opt.state[w].items():
            if isinstance(v, torch.Tensor) and v.shape == w.shape: assert (v[newly[n]] == 0).all(), (n, k)
    assert get_mask(model) == Mask(new)


def test_an_edit_reaches_every_path_before_any_forward():
    "effective_weight/weights_of, get_mask, state_dict, deepcopy, to_plain: none computes with a weight the mask prunes."
    model = apply_mask(lenet(), Mask.ones(lenet()))
    layer = model.fc
    for path in ("weights_of", "state_dict", "deepcopy", "to_plain", "enforce_masks"):
        layer.mask[0] = 0
        m = copy.deepcopy(model) if path == "deepcopy" else model
        if path == "weights_of": w = weights_of(m)["fc.weight"]
        elif path == "state_dict":
            buf = io.BytesIO(); torch.save(m.state_dict(), buf); buf.seek(0)
            w = torch.load(buf, weights_only=True)["fc.weight"]
        elif path == "deepcopy": w = m.fc.masked_weight().detach()
        elif path == "to_plain": w = to_plain(copy.deepcopy(m)).fc.weight
        else: w = enforce_masks(m).fc.weight
        assert (w[0] == 0).all(), path
        with torch.no_grad(): layer.weight[0] = 1.0          # revive by hand (no optimizer does this) for the next path
        layer.mask[0] = 1


def test_a_loaded_state_without_its_mask_is_zeroed_at_the_next_forward():
    model = apply_mask(lenet(), random_mask(lenet(), 0.1, seed=0))
    mask = get_mask(model)
    dense = {k: v for k, v in lenet(seed=3).state_dict().items()}    # dense weights, no mask keys
    model.load_state_dict(dense, strict=False)
    x, _ = batch()
    reference = plain_output(model, x, mask)
    assert torch.equal(model(x), reference)
    assert Mask.from_weights({n: w for n, w in prunable_weights(model).items()}) == mask


def test_a_non_binary_edit_is_refused_where_it_is_used():
    model = apply_mask(lenet(), Mask.ones(lenet()))
    x, _ = batch()
    model.hidden[1].mask[0, 0] = 0.5
    for f in (lambda: model(x), lambda: get_mask(model), lambda: model.state_dict(), lambda: weights_of(model)):
        with pytest.raises(ValueError) as e: f()
        assert "the mask of 'hidden.1.weight' holds 0.5" in str(e.value) and BINARY_MSG in str(e.value)
    model.hidden[1].mask[0, 0] = 1.0
    model(x)                                                                   # fixed: it runs again


def test_assigning_a_mask_checks_it_at_once_and_keeps_the_buffer():
    layer = apply_mask(lenet(), Mask.ones(lenet())).fc
    buf = layer.mask
    with pytest.raises(ValueError, match="the mask of 'fc.weight' holds nan"):
        layer.mask = torch.full((10, 100), float("nan"))
    with pytest.raises(ValueError, match=r"the mask of 'fc.weight': a tensor of shape \(3,\) for a mask of shape \(10, 100\)"):
        layer.mask = torch.ones(3)
    assert layer.mask is buf and (buf == 1).all()


def test_a_scored_layer_refuses_a_non_binary_frozen_mask():
    model = to_masked(lenet(), rule="round", seed=0)
    x, _ = batch()
    model.fc.mask[0, 0] = 0.0
    model(x)
    assert not get_mask(model)["fc.weight"][0, 0]
    model.fc.mask[0, 1] = 0.3
    with pytest.raises(ValueError, match="the mask of 'fc.weight' holds 0.3"):
        model(x)


def test_an_unchanged_mask_costs_no_work_in_forward():
    "The forward's check is an identity and an int compare: no multiply (the weight's version stays), no check."
    model = apply_mask(lenet(), random_mask(lenet(), 0.5, seed=0))
    x, _ = batch()
    model(x)
    versions = [l.weight._version for l in masked_layers(model).values()]
    calls = []
    for l in masked_layers(model).values(): l._resync = lambda m, check=True, _l=l: calls.append(_l)
    for _ in range(5): model(x)
    assert calls == [] and [l.weight._version for l in masked_layers(model).values()] == versions


def test_moving_a_model_resyncs_once_without_error():
    model = apply_mask(lenet(), random_mask(lenet(), 0.5, seed=0))
    x, _ = batch()
    model.to(torch.float64)                                    # new buffers: a new identity
    out = model(x.double())
    assert out.dtype == torch.float64 and get_mask(model) == random_mask(lenet(), 0.5, seed=0)
    assert all(l._synced[0] is l.mask for l in masked_layers(model).values())


class _OldMaskedLinear(MaskedLinear):
    "The fixed-mask layer as it was before the buffer became the source of truth: the plain forward, no check."
    forward = nn.Linear.forward


@pytest.mark.slow
def test_the_forward_check_costs_under_two_percent_of_a_training_step():
    """Masked LeNet-300-100 (28x28, batch 60, 5% density) training steps (`make_optimizer`, `keep_masks`, `train_step`),
    the new forward against the plain one, interleaved in both orders (ABBA: no order bias); the median of the paired
    ratios (neighbours in time share the machine's load), and the ratio of the best times, printed."""
    make = lambda: get_model("lenet-300-100", in_channels=1, input_size=28, seed=0).train()
    mask = random_mask(make(), 0.05, seed=0)
    new, old = apply_mask(make(), mask), apply_mask(make(), mask)
    for l in masked_layers(old).values(): l.__class__ = _OldMaskedLinear
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g)
    recipe = Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
    many = {}
    for name, m in (("old", old), ("new", new)):
        opt = make_optimizer(m, recipe); keep_masks(opt, m)
        many[name] = lambda f=train_step(m, opt): [f(x, y) for _ in range(5)]
    t = pd.concat([interleaved(many, repeats=100, warmup=3),
                   interleaved(dict(reversed(list(many.items()))), repeats=100, warmup=3).assign(repeat=lambda d: d.repeat + 100)])
    pair = t.pivot(index="repeat", columns="name", values="seconds")
    ratio, best = float((pair["new"] / pair["old"]).median()), float(pair["new"].min() / pair["old"].min())
    print(f"step time new/old, 200 interleaved repeats of 5 steps: paired median {ratio:.4f}, best {best:.4f}, "
          f"old {1000 * pair['old'].min() / 5:.2f} ms a step")
    assert ratio < 1.02
    assert get_mask(new) == mask and get_mask(old) == mask


# ---------------------------------------------------------------- 4. non-finite weights are refused by pruning

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=repr)
@pytest.mark.parametrize("layerwise", [False, True])
def test_magnitude_refuses_non_finite_weights_naming_the_tensor(bad, layerwise):
    model = lenet()
    with torch.no_grad(): model.hidden[1].weight[3, 4] = bad
    with pytest.raises(ValueError) as e:
        magnitude(Mask.ones(model), model, density=0.5, layerwise=layerwise)
    msg = str(e.value)
    assert "magnitude: weights['hidden.1.weight']" in msg and "1 non-finite" in msg


def test_magnitude_refuses_a_nan_in_a_pruned_entry_of_a_mapping_too():
    "A NaN anywhere means the run diverged; the pruned entries of a masked model are 0, so a NaN there is one too."
    w = {"a": torch.tensor([1.0, float("nan"), 3.0, 4.0])}
    m = Mask({"a": torch.tensor([True, False, True, True])})
    with pytest.raises(ValueError, match=r"weights\['a'\] has 1 non-finite of 4"):
        magnitude(m, w, density=0.5)


def test_magnitude_of_a_masked_model_with_a_nan_is_refused():
    model = apply_mask(lenet(), random_mask(lenet(), 0.5, seed=0))
    with torch.no_grad(): model.fc.weight.fill_(float("nan"))     # NaN · 0 is NaN: the pruned entries too
    with pytest.raises(ValueError, match=r"weights\['fc.weight'\] has 1000 non-finite of 1000"):
        magnitude(get_mask(model), model, fraction=0.2)


def test_from_weights_refuses_non_finite_weights():
    model = lenet()
    with torch.no_grad(): model.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Mask.from_weights: weights\['fc.weight'\] has 1 non-finite"):
        Mask.from_weights(model)
    with pytest.raises(ValueError, match=r"weights\['w'\]"):
        Mask.from_weights({"w": torch.tensor([0.0, float("inf")])})
    assert list(Mask.from_weights(model, exclude="last")) == ["hidden.0.weight", "hidden.1.weight"]  # excluded: not checked


# ---------------------------------------------------------------- 5. AdamW

def _run(make_opt, steps=5, seed=0, mask=None):
    model = lenet(seed)
    if mask is not None: apply_mask(model, mask)
    opt = make_opt(model)
    for s in range(steps):
        x, y = batch(16, seed=s)
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    return model, opt


@pytest.mark.parametrize("kw", [dict(lr=1e-3, weight_decay=1e-2), dict(lr=3e-3, weight_decay=0.3, betas=(0.8, 0.99), eps=1e-6),
                                dict(lr=1e-3, weight_decay=0.0)], ids=["default", "strong", "no-decay"])
def test_masked_adamw_matches_torch_adamw_unmasked(kw):
    ours, _ = _run(lambda m: MaskedAdamW(m.parameters(), **kw))
    theirs, _ = _run(lambda m: torch.optim.AdamW(m.parameters(), **kw))
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=n)


def test_masked_adamw_differs_from_adam_with_l2():
    "Decoupled decay is not L2 in the gradient: the two optimizers part ways at once."
    a, _ = _run(lambda m: MaskedAdamW(m.parameters(), lr=1e-3, weight_decay=0.1), steps=2)
    b, _ = _run(lambda m: MaskedAdam(m.parameters(), lr=1e-3, weight_decay=0.1), steps=2)
    assert not torch.allclose(a.fc.weight, b.fc.weight, rtol=0, atol=1e-7)


def test_masked_adamw_keeps_pruned_weights_and_their_state_exactly_zero():
    mask = random_mask(lenet(), 0.1, seed=0)
    model, opt = _run(lambda m: make_optimizer(m, Recipe(optimizer="adamw", lr=1e-2, weight_decay=0.5)), steps=10, mask=mask)
    assert type(opt) is MaskedAdamW and len(opt.masks) == 3
    for n, w in prunable_weights(model).items():
        assert (w[~mask[n]] == 0).all(), n
        assert (opt.state[w]["exp_avg"][~mask[n]] == 0).all() and (opt.state[w]["exp_avg_sq"][~mask[n]] == 0).all(), n
        assert (w[mask[n]] != 0).any(), n
    assert get_mask(model) == mask


def test_make_optimizer_builds_adamw_from_the_recipe():
    model = lenet()
    opt = make_optimizer(model, Recipe(optimizer="adamw", lr=2e-3, betas=(0.8, 0.9), weight_decay=0.05))
    g = opt.param_groups[0]
    assert type(opt) is MaskedAdamW and (g["lr"], g["betas"], g["weight_decay"]) == (2e-3, (0.8, 0.9), 0.05)
    assert type(make_optimizer(lenet(), Recipe(optimizer="adam", lr=1e-3))) is MaskedAdam   # adam is still Adam
    sd = opt.state_dict(); opt.load_state_dict(sd)                                         # a torch Optimizer


def test_unknown_optimizer_lists_adamw():
    assert "adamw" in OPTIMIZERS
    with pytest.raises(ValueError) as e:
        Recipe(optimizer="adamax")
    assert "optimizer='adamax'" in str(e.value) and all(f"'{o}'" in str(e.value) for o in ("sgd", "adam", "adamw"))


def test_existing_recipes_to_dict_unchanged():
    "The same digest as before AdamW existed (computed on the main branch): every run hash stays."
    s = json.dumps({n: r.to_dict() for n, r in RECIPES.items()} | {"default": Recipe().to_dict(),
                                                                     "adam": Recipe(optimizer="adam").to_dict()}, sort_keys=True)
    assert hashlib.sha256(s.encode()).hexdigest() == "66c7b860e108cfec53dce12267e90f8c068ae0c24f3cbef6ba1e8cb07a0d35f0"
    assert Recipe(optimizer="adamw").to_dict()["optimizer"] == "adamw"
