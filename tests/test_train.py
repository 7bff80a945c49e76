"""paper_repro.train: recipe validation, learning-rate schedules against PyTorch's, the masked optimizers against
torch.optim, the mask contract through the engine, fit's history, extra losses and callbacks, snapshots,
checkpoint/resume, evaluate, bad input, mixed precision on the CPU, and the Fashion-MNIST acceptance run."""
import copy
import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paper_repro.core import Timer
from paper_repro.data import TensorLoader, load_dataset
from paper_repro.masks import Mask, apply_mask, get_mask, keep_masks, masked_layers, random_mask, to_masked
from paper_repro.models import get_model, prunable_weights, same_state
from paper_repro.recipes import get_recipe, lr_at, OPTIMIZERS, Recipe, RECIPES, SCHEDULES, TRAINS
from paper_repro.optim import make_optimizer, MaskedAdam, MaskedSGD
from paper_repro.train import Callback, evaluate, fit, FitState, Snapshot


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    "scikit-learn's 8x8 digits: 1438 training and 359 test images."
    return {"train": load_dataset("digits", "train"), "test": load_dataset("digits", "test")}


def net(seed=0):
    return get_model("lenet-300-100", in_channels=1, input_size=8, seed=seed)


def conv(seed=0):
    "A tiny conv path: Conv-2 at a quarter width on 8x8 inputs."
    return get_model("conv2", in_channels=1, input_size=8, width=0.25, seed=seed)


BUILDS = [net, conv]
SGD = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
ADAM = Recipe(optimizer="adam", lr=1e-3, weight_decay=1e-4)
QUICK = get_recipe("cpu", epochs=3, batch_size=128, lr=0.1)
PER_EPOCH = math.ceil(1438 / 128)  # batches of digits' training split at batch size 128


def run(model, data, recipe=QUICK, **kw):
    return fit(model, data, recipe, device="cpu", progress=False, **kw)


def batches(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def steps(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def manual_eval(model, split):
    "Mean cross-entropy and accuracy over the whole split in one float64 pass, normalised as (x/255 - mean)/std."
    c = split.x.shape[1]
    x = (split.x.float() / 255 - torch.tensor(split.mean).view(1, c, 1, 1)) / torch.tensor(split.std).view(1, c, 1, 1)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x).double()
    model.train(was)
    return F.cross_entropy(out, split.y).item(), (out.argmax(1) == split.y).double().mean().item()


def values(h, split, metric):
    return h.query("split == @split and metric == @metric").sort_values("epoch").value.tolist()


class Count(Callback):
    "Records every hook call."
    def __init__(self):
        self.starts, self.iterations, self.epochs, self.step_epochs, self.trained = [], [], [], [], []

    def on_fit_start(self, s): self.starts.append(s.iteration)
    def on_step(self, s): self.iterations.append(s.iteration); self.step_epochs.append(s.epoch)
    def on_epoch_trained(self, s): self.trained.append((s.epoch, s.iteration))
    def on_epoch_end(self, s): self.epochs.append(s.epoch)


class Interrupt(Callback):
    def __init__(self, at): self.at = at

    def on_step(self, s):
        if s.iteration == self.at:
            raise KeyboardInterrupt


def stop_at(e):
    def stop(state): state.stop = state.epoch >= e
    return stop


# ---------------------------------------------------------------- 1. recipes

BAD_RECIPES = [
    (dict(optimizer="rmsprop"), ["optimizer='rmsprop'", *map(repr, OPTIMIZERS)]),
    (dict(optimizer=None), ["optimizer=None", "'sgd'"]),
    (dict(schedule="linear"), ["schedule='linear'", *map(repr, SCHEDULES)]),
    (dict(trains="masks"), ["trains='masks'", *map(repr, TRAINS)]),
    (dict(lr=0), ["lr=0"]),
    (dict(lr=-0.1), ["lr=-0.1"]),
    (dict(lr=float("nan")), ["lr=nan"]),
    (dict(lr="0.1"), ["lr='0.1'"]),
    (dict(momentum=1.0), ["momentum=1.0", "[0, 1)"]),
    (dict(momentum=-0.5), ["momentum=-0.5"]),
    (dict(weight_decay=-1e-4), ["weight_decay=-0.0001"]),
    (dict(gamma=0), ["gamma=0"]),
    (dict(epochs=2.5), ["epochs=2.5", "integer"]),
    (dict(epochs=0), ["epochs=0"]),
    (dict(epochs=True), ["epochs=True"]),
    (dict(epochs=10.0), ["epochs=10.0", "integer"]),
    (dict(batch_size=0), ["batch_size=0"]),
    (dict(batch_size=32.0), ["batch_size=32.0"]),
    (dict(crop=-1), ["crop=-1"]),
    (dict(warmup=11, epochs=10), ["warmup=11"]),
    (dict(warmup=-1), ["warmup=-1"]),
    (dict(schedule="multistep", milestones=(5, 3), epochs=10), ["milestones=(5, 3)", "increasing"]),
    (dict(schedule="multistep", milestones=(4, 4), epochs=10), ["milestones=(4, 4)", "increasing"]),
    (dict(schedule="multistep", milestones=(0, 5), epochs=10), ["milestones=0"]),
    (dict(schedule="multistep", milestones=(5, 10), epochs=10), ["milestones=10"]),
    (dict(schedule="multistep", milestones=(2.5,), epochs=10), ["milestones=2.5"]),
    (dict(schedule="cosine", milestones=(5,)), ["milestones=(5,)", "multistep", "schedule='cosine'"]),
    (dict(schedule="constant", milestones=[3]), ["milestones=(3,)", "multistep"]),
    (dict(momentum=0, nesterov=True), ["nesterov", "momentum"]),
    (dict(betas=(0.9,)), ["betas=(0.9,)"]),
    (dict(betas=(0.9, 1.0)), ["betas=1.0"]),
    (dict(betas=(-0.1, 0.999)), ["betas=-0.1"]),
]


@pytest.mark.parametrize("changes,words", BAD_RECIPES, ids=[repr(c) for c, _ in BAD_RECIPES])
def test_bad_recipe_field_raises_naming_field_and_value(changes, words):
    """A bad value raises ValueError naming the field, the value and (for names) what is allowed."""
    with pytest.raises(ValueError) as e:
        Recipe(**changes)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("changes,field", [(dict(nesterov="no"), "nesterov"), (dict(flip="yes"), "flip"),
                                           (dict(betas=0.9), "betas"),
                                           (dict(schedule="multistep", milestones=5), "milestones")],
                         ids=["nesterov='no'", "flip='yes'", "betas=0.9", "milestones=5"])
def test_wrongly_typed_recipe_field_raises_value_error(changes, field):
    """A value of the wrong type (a string for a flag, a number for a tuple) is refused like any bad value."""
    with pytest.raises(ValueError, match=field):
        Recipe(**changes)


@pytest.mark.parametrize("changes", [dict(warmup=10, epochs=10), dict(warmup=0.5), dict(momentum=0.0),
                                     dict(schedule="multistep", milestones=(1, 9), epochs=10),
                                     dict(optimizer="adam", betas=(0.0, 0.0)), dict(weight_decay=0)])
def test_edge_values_are_accepted(changes):
    """The ends of every allowed range are allowed."""
    r = Recipe(**changes)
    assert all(getattr(r, k) == (tuple(v) if isinstance(v, list) else v) for k, v in changes.items())


def test_recipe_is_frozen_and_equal_and_hashable_by_value():
    """Recipes cannot be changed in place; equal fields (lists or tuples) mean equal recipes with equal hashes."""
    a = Recipe(schedule="multistep", milestones=[3, 6], epochs=8, betas=[0.8, 0.99])
    b = Recipe(schedule="multistep", milestones=(3, 6), epochs=8, betas=(0.8, 0.99))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.lr = 0.2
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != b.replace(gamma=0.2) and len({a, b.replace(gamma=0.2)}) == 2


def test_replace_validates_and_leaves_the_original():
    """replace returns a checked copy; the original recipe is unchanged."""
    r = Recipe()
    assert r.replace(lr=0.3).lr == 0.3 and r.lr == 0.1
    with pytest.raises(ValueError, match="lr=-1"):
        r.replace(lr=-1)
    with pytest.raises(ValueError, match="milestones"):
        r.replace(milestones=(2,))


def test_to_dict_is_json_and_round_trips():
    """to_dict gives plain JSON (lists for tuples) and Recipe(**d) gives the recipe back."""
    r = Recipe(optimizer="adam", betas=(0.8, 0.99), schedule="multistep", milestones=(2, 5), gamma=0.5, epochs=7,
               warmup=1.5, crop=4, flip=True)
    d = r.to_dict()
    assert d["milestones"] == [2, 5] and d["betas"] == [0.8, 0.99]
    assert set(d) == {f.name for f in dataclasses.fields(Recipe)} - {"delta"}   # delta: only when set
    assert Recipe(**json.loads(json.dumps(d))) == r
    r = r.replace(schedule="asni-code", milestones=(), delta=0.3)
    assert set(r.to_dict()) == {f.name for f in dataclasses.fields(Recipe)}
    assert Recipe(**json.loads(json.dumps(r.to_dict()))) == r


def test_get_recipe_and_unknown_name():
    """get_recipe applies changes without touching RECIPES; an unknown name lists every known one."""
    before = RECIPES["cpu"]
    r = get_recipe("cpu", epochs=3)
    assert r.epochs == 3 and r == before.replace(epochs=3) and RECIPES["cpu"] is before and get_recipe("cpu") == before
    with pytest.raises(ValueError) as e:
        get_recipe("fast")
    assert "'fast'" in str(e.value) and all(n in str(e.value) for n in RECIPES)


# ---------------------------------------------------------------- 2. learning-rate schedules

def torch_rates(sched_cls, lr, epochs, **kw):
    "The rate PyTorch's scheduler gives in each epoch, stepped once per epoch."
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    s, out = sched_cls(opt, **kw), []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    return out


@pytest.mark.parametrize("epochs,lr", [(1, 0.1), (5, 0.05), (20, 0.1), (90, 0.3)])
def test_cosine_matches_cosine_annealing_lr(epochs, lr):
    """Cosine equals CosineAnnealingLR(T_max=epochs) stepped per epoch."""
    r = Recipe(lr=lr, epochs=epochs, schedule="cosine")
    expected = torch_rates(torch.optim.lr_scheduler.CosineAnnealingLR, lr, epochs, T_max=epochs)
    assert [lr_at(r, e) for e in range(epochs)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("epochs,milestones,gamma", [(20, (8, 15), 0.2), (10, (1,), 0.1), (12, (3, 6, 9), 0.5),
                                                     (6, (5,), 2.0), (30, (), 0.1)])
def test_multistep_matches_multistep_lr(epochs, milestones, gamma):
    """Multi-step equals MultiStepLR(milestones, gamma) stepped per epoch."""
    r = Recipe(lr=0.1, epochs=epochs, schedule="multistep", milestones=milestones, gamma=gamma)
    expected = torch_rates(torch.optim.lr_scheduler.MultiStepLR, 0.1, epochs, milestones=list(milestones), gamma=gamma)
    assert [lr_at(r, e) for e in range(epochs)] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("epochs,delta", [(20, 1.1), (90, 1.5)])
def test_asni_printed_cosine_by_hand(epochs, delta):
    """schedule='asni' is eta0*cos(pi*e/((1+delta)*E)) at every epoch e (from 0), as ASNI's paper prints it."""
    r = Recipe(lr=0.2, epochs=epochs, schedule="asni", delta=delta)
    want = [0.2 * math.cos(math.pi * e / ((1 + delta) * epochs)) for e in range(epochs)]
    assert [lr_at(r, e) for e in range(epochs)] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("epochs,delta", [(90, 0.02), (160, 0.06), (20, 0.0)])
def test_asni_code_cosine_by_hand_and_positive(epochs, delta):
    """schedule='asni-code' is eta0/2*(1+cos(pi*e/((1+delta)*(E+1)))): the code's scale_coslr is 1 + delta."""
    r = Recipe(lr=0.35, epochs=epochs, schedule="asni-code", delta=delta)
    rates = [lr_at(r, e) for e in range(epochs)]
    want = [0.35 * 0.5 * (1 + math.cos(math.pi * e / ((1 + delta) * (epochs + 1)))) for e in range(epochs)]
    assert rates == pytest.approx(want, rel=1e-12)
    assert rates[0] == 0.35 and min(rates) > 0 and rates == sorted(rates, reverse=True)


@pytest.mark.parametrize("epochs,delta,first", [(160, 0.06, 85), (90, 0.02, 46), (10, 0.0, 5)])
def test_asni_printed_cosine_that_turns_negative_is_refused(epochs, delta, first):
    """Table 1's CIFAR recipe with the printed formula would have a negative rate from epoch (1+delta)E/2 on."""
    with pytest.raises(ValueError, match=f"epoch {first} .*asni-code"):
        Recipe(lr=0.05, epochs=epochs, schedule="asni", delta=delta)
    assert math.ceil((1 + delta) * epochs / 2) == first


def test_delta_is_only_for_asni_and_absent_from_old_keys():
    """delta needs an ASNI schedule; unset, it is not in to_dict, so recipes cached before it keep their keys."""
    with pytest.raises(ValueError, match="delta=0.06.*only for schedule='asni'"):
        Recipe(delta=0.06)
    assert "delta" not in Recipe().to_dict() and "delta" not in get_recipe("cpu").to_dict()
    r = Recipe(schedule="asni-code", delta=0.06, epochs=160)
    assert r.to_dict()["delta"] == 0.06 and Recipe(**r.to_dict()) == r


def test_constant_is_constant():
    """Constant gives the peak rate at every epoch and progress."""
    r = Recipe(lr=0.07, epochs=9, schedule="constant")
    assert {lr_at(r, e, p) for e in range(9) for p in (0.1, 0.5, 1.0)} == {0.07}


@pytest.mark.parametrize("schedule,warmup", [("constant", 2), ("cosine", 3), ("cosine", 1.5), ("multistep", 4)])
def test_warmup_is_linear_then_reaches_the_schedule(schedule, warmup):
    """During warm-up the rate is (epoch + progress)/warmup times the schedule's; afterwards it is the schedule's."""
    epochs, lr = 10, 0.2
    kw = dict(milestones=(2, 6)) if schedule == "multistep" else {}
    r = Recipe(lr=lr, epochs=epochs, schedule=schedule, warmup=warmup, **kw)
    sched = {"constant": [lr] * epochs,
             "cosine": torch_rates(torch.optim.lr_scheduler.CosineAnnealingLR, lr, epochs, T_max=epochs),
             "multistep": torch_rates(torch.optim.lr_scheduler.MultiStepLR, lr, epochs, milestones=[2, 6], gamma=0.1)}[schedule]
    for e in range(epochs):
        for p in (0.1, 0.25, 0.5, 1.0):
            factor = min(1.0, (e + p) / warmup)
            assert lr_at(r, e, p) == pytest.approx(factor * sched[e], rel=1e-12, abs=1e-15), (e, p)
    assert lr_at(r, 0, 0.5) == pytest.approx(lr * 0.5 / warmup, rel=1e-12)
    assert [lr_at(r, e) for e in range(math.ceil(warmup), epochs)] == pytest.approx(sched[math.ceil(warmup):], rel=1e-12, abs=1e-15)


def test_fit_sets_the_rate_of_every_step():
    """Inside fit, step i of epoch e runs at lr_at(recipe, e, (i+1)/I)."""
    class Rates(Callback):
        def __init__(self): self.rates = []
        def on_step(self, s): self.rates.append(s.optimizer.param_groups[0]["lr"])
    r = Recipe(lr=0.1, epochs=3, batch_size=128, schedule="cosine", warmup=1.5)
    cb = Rates()
    run(net(), {"train": load_dataset("digits", "train")}, r, callbacks=[cb])
    expected = [lr_at(r, e, (i + 1) / PER_EPOCH) for e in range(3) for i in range(PER_EPOCH)]
    assert cb.rates == pytest.approx(expected, rel=1e-12)
    assert cb.rates[0] == pytest.approx(0.1 * (1 / PER_EPOCH) / 1.5, rel=1e-12)


# ---------------------------------------------------------------- 3. the optimizers against torch.optim

OPTS = [
    ("sgd", dict(lr=0.05)),
    ("sgd", dict(lr=0.05, weight_decay=1e-3)),
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=5e-4)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-4)),
    ("adam", dict(lr=1e-3)),
    ("adam", dict(lr=1e-3, weight_decay=1e-4)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3)),
]
OURS = {"sgd": MaskedSGD, "adam": MaskedAdam}
THEIRS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("kind,kw", OPTS, ids=[f"{k}-{kw}" for k, kw in OPTS])
def test_unmasked_optimizer_matches_torch(build, kind, kw):
    """With no masks, 30 steps of MaskedSGD / MaskedAdam give torch.optim.SGD / Adam's weights within 1e-5."""
    data = batches(30)
    a, b = build(), build()
    steps(a, OURS[kind](a.parameters(), **kw), data)
    steps(b, THEIRS[kind](b.parameters(), **kw), data)
    assert not same_state(a, build())  # it trained
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.detach(), pb.detach(), atol=1e-5, rtol=0, msg=n)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind,kw", [("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)),
                                     ("adam", dict(lr=1e-3, weight_decay=1e-4))])
def test_state_dict_round_trip_continues_bit_identically(kind, kw, masked):
    """Saving after 10 steps and loading into a new model and optimizer continues exactly as without the break."""
    data = batches(20)
    mask = random_mask(net(), 0.3, seed=0)

    def make(model):
        if masked:
            apply_mask(model, mask)
        masks = {l.weight: l.mask for l in masked_layers(model).values()}
        return OURS[kind](model.parameters(), **kw, masks=masks)

    a = net()
    opt_a = make(a)
    steps(a, opt_a, data[:10])
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(opt_a.state_dict())
    steps(a, opt_a, data[10:])

    b = net(seed=1)
    opt_b = make(b)
    b.load_state_dict(saved_model)
    opt_b.load_state_dict(saved_opt)
    steps(b, opt_b, data[10:])
    assert same_state(a, b)
    assert not same_state(a, saved_model)


def test_masks_must_be_optimized_parameters_of_the_same_shape():
    """A mask for a tensor the optimizer does not hold, or of another shape, is refused."""
    m = net()
    w = next(iter(prunable_weights(m).values()))
    with pytest.raises(ValueError, match="not among"):
        MaskedSGD([p for p in m.parameters() if p is not w], lr=0.1, masks={w: torch.ones_like(w)})
    with pytest.raises(ValueError, match="shape"):
        MaskedAdam(m.parameters(), masks={w: torch.ones(3)})


# ---------------------------------------------------------------- 4. the mask contract through the engine

@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("recipe", [SGD, ADAM], ids=["sgd", "adam"])
def test_fixed_mask_survives_200_steps_exactly(build, recipe):
    """200 steps of make_optimizer's optimizer keep every pruned weight exactly 0 and the mask and density unchanged."""
    model = build()
    mask = random_mask(model, 0.05, seed=0)
    apply_mask(model, mask)
    before = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    opt = make_optimizer(model, recipe)
    assert len(opt.masks) == len(mask)
    steps(model, opt, batches(200))
    for n, w in prunable_weights(model).items():
        assert (w[~mask[n]] == 0).all(), n
        assert not torch.equal(w[mask[n]], before[n][mask[n]]), n  # the kept weights trained
    assert Mask.from_weights(model) == mask
    assert Mask.from_weights(model).density == sum(int(t.sum()) for t in mask.values()) / sum(t.numel() for t in mask.values())


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("recipe", [SGD, ADAM], ids=["sgd", "adam"])
def test_mask_shrunk_in_place_mid_training_holds_despite_optimizer_state(build, recipe):
    """Shrinking the mask in place after 100 steps: the newly pruned entries' state holds their history until the next
    step, which zeroes it; after 100 more steps the pruned weights and all their state are exactly 0."""
    model = build()
    mask = random_mask(model, 0.5, seed=0)
    apply_mask(model, mask)
    opt = make_optimizer(model, recipe)
    steps(model, opt, batches(100, seed=0))
    smaller = mask & random_mask(model, 0.3, seed=1)
    apply_mask(model, smaller)
    key = "momentum_buffer" if recipe.optimizer == "sgd" else "exp_avg"
    newly = {n: mask[n] & ~smaller[n] for n in mask}
    state = {n: opt.state[w][key] for n, w in prunable_weights(model).items()}
    assert any((state[n][newly[n]] != 0).any() for n in mask)  # the optimizer would move them
    steps(model, opt, batches(100, seed=1))
    for n, w in prunable_weights(model).items():
        assert (w[~smaller[n]] == 0).all(), n
        for k, v in opt.state[w].items():
            if torch.is_tensor(v) and v.shape == w.shape: assert (v[~smaller[n]] == 0).all(), (n, k)
    assert Mask.from_weights(model) == smaller


@pytest.mark.parametrize("recipe", [SGD, SGD.replace(nesterov=True), ADAM], ids=["sgd", "nesterov", "adam"])
def test_masked_entries_state_is_exactly_zero_and_kept_entries_match_the_masked_gradient(recipe):
    """Every state tensor is 0 at pruned entries after 50 steps; one SGD step without momentum moves a kept weight by
    exactly -lr * (its gradient + wd * w), as the gradient of the masked network prescribes."""
    model = net()
    mask = random_mask(model, 0.2, seed=3)
    apply_mask(model, mask)
    opt = make_optimizer(model, recipe)
    steps(model, opt, batches(50))
    for n, w in prunable_weights(model).items():
        tensors = [v for v in opt.state[w].values() if torch.is_tensor(v) and v.shape == w.shape]
        assert tensors and all((v[~mask[n]] == 0).all() for v in tensors), n
    plain = Recipe(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=1e-3)
    opt = make_optimizer(model, plain)
    x, y = batches(1)[0]
    before = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    opt.zero_grad(); F.cross_entropy(model(x), y).backward()
    grads = {n: w.grad.detach().clone() for n, w in prunable_weights(model).items()}
    opt.step()
    for n, w in prunable_weights(model).items():
        want = torch.where(mask[n], before[n] - 0.1 * (grads[n] + 1e-3 * before[n]), torch.zeros(()))
        torch.testing.assert_close(w.detach(), want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("trains", ["both", "scores"])
@pytest.mark.parametrize("recipe", [SGD.replace(lr=0.5), ADAM.replace(lr=0.02)], ids=["sgd", "adam"])
def test_scored_model_frozen_entries_never_enter_the_mask(recipe, trains):
    """With round-rule scores and frozen q, 200 steps never revive a q=0 entry and scores stay in [0, 1]."""
    model = net()
    q = random_mask(model, 0.3, seed=0)
    scored = to_masked(model, mask=q, rule="round", seed=0)
    w0 = {n: l.weight.detach().clone() for n, l in masked_layers(scored).items()}
    s0 = {n: l.scores.detach().clone() for n, l in masked_layers(scored).items()}
    opt = make_optimizer(scored, recipe.replace(trains=trains))
    keep_masks(opt, scored)
    steps(scored, opt, batches(200))
    cur = get_mask(scored)
    for n, l in masked_layers(scored).items():
        assert not (cur[n] & ~q[n]).any(), n
        assert 0 <= l.scores.min() and l.scores.max() <= 1, n
        assert not torch.equal(l.scores, s0[n]), n
        assert torch.equal(l.weight, w0[n]) == (trains == "scores"), n
    assert cur.density < q.density  # rounding dropped some of q's entries; none outside q was added


def test_fit_keeps_frozen_entries_of_a_scored_model():
    """Through fit (trains='both'), q=0 entries never enter get_mask, scores stay in [0, 1], density is get_mask's."""
    data = {"train": load_dataset("digits", "train")}
    q = random_mask(net(), 0.3, seed=0)
    scored = to_masked(net(), mask=q, rule="round", seed=0)
    dens = []
    h = run(scored, data, QUICK.replace(trains="both", lr=0.5), callbacks=[lambda s: dens.append(get_mask(s.model).density)])
    cur = get_mask(scored)
    for n, l in masked_layers(scored).items():
        assert not (cur[n] & ~q[n]).any(), n
        assert 0 <= l.scores.min() and l.scores.max() <= 1, n
    assert h.groupby("epoch").density.first().tolist() == dens


def param_kind(name):
    return "scores" if name.endswith("scores") else "weights"


@pytest.mark.parametrize("first", TRAINS)
@pytest.mark.parametrize("trains", TRAINS)
def test_make_optimizer_trains_what_the_recipe_says(trains, first):
    """requires_grad and the optimized set follow `trains` (whatever a previous call froze); the rest is frozen."""
    model = to_masked(net(), rule="round", seed=0)
    make_optimizer(model, SGD.replace(trains=first))
    opt = make_optimizer(model, SGD.replace(trains=trains))
    on = {n for n, p in model.named_parameters() if trains == "both" or param_kind(n) == trains}
    assert on and {n for n, p in model.named_parameters() if p.requires_grad} == on
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for n, p in model.named_parameters() if n in on}
    assert opt.masks == {}  # a scored model has no fixed masks


@pytest.mark.parametrize("recipe", [SGD.replace(nesterov=True, momentum=0.8), ADAM.replace(betas=(0.7, 0.9))],
                         ids=["sgd", "adam"])
def test_make_optimizer_uses_the_recipe_and_the_mask_buffers(recipe):
    """The optimizer has the recipe's hyper-parameters and, as masks, the very mask buffers of the fixed layers."""
    model = apply_mask(net(), random_mask(net(), 0.2, seed=0))
    opt = make_optimizer(model, recipe)
    g = opt.param_groups[0]
    if recipe.optimizer == "sgd":
        assert isinstance(opt, MaskedSGD) and (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.05, 0.8, True, 5e-4)
    else:
        assert isinstance(opt, MaskedAdam) and (g["lr"], g["betas"], g["weight_decay"]) == (1e-3, (0.7, 0.9), 1e-4)
    layers = masked_layers(model)
    assert {id(w) for w in opt.masks} == {id(l.weight) for l in layers.values()}
    assert all(opt.masks[l.weight] is l.mask for l in layers.values())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("trains", ["scores", "both"])
@pytest.mark.parametrize("fixed", [False, True])
def test_make_optimizer_refuses_scores_without_scores(trains, fixed):
    """trains='scores'/'both' on a plain or fixed-mask model raises ValueError pointing to to_masked."""
    model = apply_mask(net(), random_mask(net(), 0.5)) if fixed else net()
    with pytest.raises(ValueError) as e:
        make_optimizer(model, SGD.replace(trains=trains))
    assert f"trains={trains!r}" in str(e.value) and "to_masked" in str(e.value)


# ---------------------------------------------------------------- 5. fit: history, seeds, extra losses, callbacks

def test_history_columns_epochs_splits_lr_density_time(digits):
    """One row per (epoch, split, metric) with the exact columns, every split, lr_at's rate, density 1, rising time."""
    data = {**digits, "val": load_dataset("digits", "val", val_size=100)}
    r = QUICK.replace(warmup=1.5)
    model = net()
    h = run(model, data, r)
    assert h.columns.tolist() == ["epoch", "split", "metric", "value", "density", "lr", "time"]
    assert sorted(h.epoch.unique()) == [1, 2, 3]
    assert set(zip(h.split, h.metric)) == {(s, m) for s in ("train", "val", "test") for m in ("loss", "acc")}
    assert not h.duplicated(["epoch", "split", "metric"]).any() and len(h) == 3 * 3 * 2
    assert all(row.lr == lr_at(r, row.epoch - 1, 1.0) for row in h.itertuples())
    assert (h.density == 1.0).all()
    assert (h.time >= 0).all() and h.time.is_monotonic_increasing
    last = h[h.epoch == 3]
    for split in ("val", "test"):
        loss, acc = manual_eval(model, data[split])
        assert values(last, split, "loss")[0] == pytest.approx(loss, rel=1e-5)
        assert values(last, split, "acc")[0] == pytest.approx(acc, abs=1e-12)


def test_train_metrics_are_running_means_over_the_epoch(digits):
    """Train loss/acc of epoch 1 are the means over its batches, each at the weights before its step."""
    snap = Snapshot(iterations=range(PER_EPOCH))
    h = run(net(), digits, QUICK, callbacks=[snap])
    split = digits["train"]
    order = TensorLoader(split, 128, seed=0, device="cpu").plan(0)["order"]
    c = split.x.shape[1]
    x = (split.x.float() / 255 - torch.tensor(split.mean).view(1, c, 1, 1)) / torch.tensor(split.std).view(1, c, 1, 1)
    loss = correct = 0.0
    for i in range(PER_EPOCH):
        idx = order[i * 128:(i + 1) * 128]
        m = net()
        m.load_state_dict(snap.iterations[i])
        with torch.no_grad():
            out = m(x[idx])
        loss += F.cross_entropy(out.double(), split.y[idx], reduction="sum").item()
        correct += (out.argmax(1) == split.y[idx]).sum().item()
    assert values(h, "train", "loss")[0] == pytest.approx(loss / len(split), rel=1e-5)
    assert values(h, "train", "acc")[0] == pytest.approx(correct / len(split), rel=1e-6)


def test_masked_fit_density_column_and_mask_kept(digits):
    """Under mask=, the density column is the mask's (counted by hand) and the trained model keeps the mask exactly."""
    model = net()
    mask = random_mask(model, 0.1, seed=0)
    h = run(model, digits, mask=mask)
    kept = sum(int(t.sum()) for t in mask.values()) / sum(t.numel() for t in mask.values())
    assert h.density.unique().tolist() == [kept]
    assert Mask.from_weights(model) == mask


@pytest.mark.parametrize("build", BUILDS)
def test_same_seed_same_history_and_weights_other_seed_differs(build, digits):
    """Same seed: identical history (all but time) and weights; another seed: another history and other weights."""
    mask = random_mask(build(), 0.2, seed=0)
    a, b, c = build(), build(), build()
    ha, hb = run(a, digits, mask=mask), run(b, digits, mask=mask)
    hc = run(c, digits, mask=mask, seed=1)
    pd.testing.assert_frame_equal(ha.drop(columns="time"), hb.drop(columns="time"))
    assert same_state(a, b)
    assert not ha.value.equals(hc.value) and not same_state(a, c)


def test_fit_accepts_a_recipe_name_or_dict_and_a_dataset_name(digits):
    """A recipe dict equals the Recipe; a dataset name gives its train and test splits."""
    r = QUICK.replace(epochs=1)
    h1 = run(net(), digits, r)
    h2 = run(net(), "digits", r.to_dict())
    pd.testing.assert_frame_equal(h1.drop(columns="time"), h2.drop(columns="time"))


def test_constant_extra_term_logs_exactly_c_and_leaves_training_alone(digits):
    """A constant term logs exactly c every epoch under its function's name; training and task loss are unchanged."""
    def const(model): return torch.tensor(0.25)
    a, b = net(), net()
    h = run(a, digits, extra_loss=const)
    h0 = run(b, digits)
    assert values(h, "train", "const") == [0.25] * 3
    assert values(h, "train", "loss") == values(h0, "train", "loss")
    assert same_state(a, b)


def test_dict_of_extra_terms_logs_each_epoch_mean(digits):
    """Each term of a dict logs its epoch mean (weighted by batch size), computed here from the batch sizes."""
    calls = []

    def counter(model):
        calls.append(1)
        return torch.tensor(float(len(calls)))
    h = run(net(), digits, extra_loss={"count": counter, "half": lambda m: torch.tensor(0.5)})
    sizes = [min(128, 1438 - i * 128) for i in range(PER_EPOCH)]
    expected = [sum((e * PER_EPOCH + i + 1) * s for i, s in enumerate(sizes)) / 1438 for e in range(3)]
    assert len(calls) == 3 * PER_EPOCH
    assert values(h, "train", "count") == pytest.approx(expected, rel=1e-6)
    assert values(h, "train", "half") == [0.5] * 3
    assert set(h.metric) == {"loss", "acc", "count", "half"}


def test_lambda_extra_term_is_named_extra_loss_and_is_minimised(digits):
    """A lambda logs as 'extra_loss'; an L2 term is in the loss (smaller weights than without it)."""
    l2 = lambda m: 1e-2 * sum((w ** 2).sum() for w in prunable_weights(m).values())
    a, b = net(), net()
    h = run(a, digits, extra_loss=l2)
    run(b, digits)
    assert "extra_loss" in set(h.metric)
    norm = lambda m: sum((w ** 2).sum().item() for w in prunable_weights(m).values())
    assert norm(a) < 0.9 * norm(b)
    assert values(h, "train", "extra_loss")[-1] < values(h, "train", "extra_loss")[0]


def test_plain_function_callback_log_and_stop(digits):
    """A function is called once per epoch; state.log adds rows (any split); state.stop ends after that epoch."""
    seen = []

    def cb(state):
        seen.append(state.epoch)
        assert isinstance(state, FitState) and state.iteration == state.epoch * PER_EPOCH
        state.log("ten_epoch", 10 * state.epoch)
        state.log("note", -1.5, split="val")
        state.stop = state.epoch == 2
    h = run(net(), digits, QUICK.replace(epochs=5), callbacks=[cb])
    assert seen == [1, 2]
    assert sorted(h.epoch.unique()) == [1, 2]
    assert values(h, "train", "ten_epoch") == [10.0, 20.0]
    assert values(h, "val", "note") == [-1.5, -1.5]
    row = h.query("metric == 'ten_epoch' and epoch == 2").iloc[0]
    other = h.query("metric == 'loss' and split == 'train' and epoch == 2").iloc[0]
    assert (row.lr, row.density) == (other.lr, other.density)


def test_callback_hooks_are_called_the_right_number_of_times(digits):
    """on_fit_start once at iteration 0, on_step epochs*len(loader) times with iteration 1..N, on_epoch_trained and
    on_epoch_end once per epoch (the first after the epoch's last step)."""
    cb = Count()
    run(net(), digits, callbacks=[cb])
    n = 3 * PER_EPOCH
    assert cb.starts == [0]
    assert cb.iterations == list(range(1, n + 1))
    assert cb.step_epochs == [(i - 1) // PER_EPOCH for i in range(1, n + 1)]
    assert cb.epochs == [1, 2, 3]
    assert cb.trained == [(e, e * PER_EPOCH) for e in (1, 2, 3)]


# ---------------------------------------------------------------- 6. snapshots

def test_snapshot_iteration_zero_is_the_initialisation(digits):
    """Iteration 0 and epoch 0 are the initial state dict, kept as copies while the model trains."""
    snap = Snapshot(iterations=[0], epochs=[0])
    model = net()
    run(model, digits, callbacks=[snap])
    assert same_state(snap.iterations[0], net().state_dict()) and same_state(snap.epochs[0], net().state_dict())
    assert not same_state(snap.iterations[0], model)


def test_snapshot_of_a_masked_fit_holds_the_masks(digits):
    """A snapshot is the full state dict: the mask buffers are in it."""
    mask = random_mask(net(), 0.2, seed=0)
    snap = Snapshot(iterations=[0])
    run(net(), digits, mask=mask, callbacks=[snap])
    for n in mask:
        assert torch.equal(snap.iterations[0][n[:-len("weight")] + "mask"].bool(), mask[n])


@pytest.mark.parametrize("e", [1, 2])
def test_epoch_snapshot_equals_a_run_stopped_there(e, digits):
    """The epoch-e snapshot equals the weights of the same recipe stopped after epoch e; iteration e*I is the same."""
    snap = Snapshot(iterations=[e * PER_EPOCH], epochs=[e])
    run(net(), digits, QUICK.replace(epochs=4), callbacks=[snap])
    stopped = net()
    run(stopped, digits, QUICK.replace(epochs=4), callbacks=[stop_at(e)])
    assert same_state(snap.epochs[e], stopped.state_dict())
    assert same_state(snap.iterations[e * PER_EPOCH], stopped.state_dict())
    assert sorted(snap.epochs) == [e] and sorted(snap.iterations) == [e * PER_EPOCH]


# ---------------------------------------------------------------- 7. checkpoints and resume

RESUME = [get_recipe("cpu", epochs=4, batch_size=128, lr=0.1),
          Recipe(optimizer="adam", lr=2e-3, weight_decay=1e-4, epochs=4, batch_size=128, schedule="cosine")]


@pytest.mark.parametrize("recipe", RESUME, ids=["sgd", "adam"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(recipe, digits, tmp_path):
    """Interrupted mid-epoch 3 and resumed from its checkpoint, a masked run ends with identical weights, history, snapshots."""
    mask = random_mask(net(), 0.3, seed=0)
    full_snap, full = Snapshot(iterations=[0, 5], epochs=[1, 3]), net()
    h_full = run(full, digits, recipe, mask=mask, callbacks=[full_snap])

    ck = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        run(net(), digits, recipe, mask=mask, callbacks=[Snapshot(iterations=[0, 5], epochs=[1, 3]),
                                                        Interrupt(2 * PER_EPOCH + 5)], checkpoint=ck)
    assert torch.load(ck, weights_only=True)["epoch"] == 2
    snap, resumed, count = Snapshot(iterations=[0, 5], epochs=[1, 3]), net(), Count()
    h_res = run(resumed, digits, recipe, mask=mask, callbacks=[snap, count], checkpoint=ck)
    pd.testing.assert_frame_equal(h_full.drop(columns="time"), h_res.drop(columns="time"))
    assert same_state(full, resumed)
    assert count.iterations == list(range(2 * PER_EPOCH + 1, 4 * PER_EPOCH + 1)) and count.starts == []
    assert all(same_state(full_snap.iterations[k], snap.iterations[k]) for k in (0, 5))
    assert all(same_state(full_snap.epochs[k], snap.epochs[k]) for k in (1, 3))


@pytest.mark.parametrize("recipe,seed", [(RESUME[0].replace(epochs=1, lr=0.2), 0), (RESUME[0].replace(epochs=1), 1),
                                         (RESUME[1].replace(epochs=1), 0)], ids=["lr", "seed", "optimizer"])
def test_resuming_with_another_recipe_or_seed_raises(recipe, seed, digits, tmp_path):
    """A checkpoint written by another recipe or seed is refused, naming the file."""
    ck = tmp_path / "ck.pt"
    run(net(), digits, RESUME[0].replace(epochs=1), checkpoint=ck)
    with pytest.raises(ValueError, match="ck.pt"):
        run(net(), digits, recipe, seed=seed, checkpoint=ck)


def test_completed_checkpoint_returns_the_history_without_training(digits, tmp_path):
    """Re-running a finished run with its checkpoint takes no step and returns the same history and weights."""
    ck = tmp_path / "ck.pt"
    done = net()
    h = run(done, digits, checkpoint=ck)
    again, count = net(), Count()
    h2 = run(again, digits, callbacks=[count], checkpoint=ck)
    assert count.iterations == [] and count.starts == [] and count.epochs == []
    pd.testing.assert_frame_equal(h, h2)
    assert same_state(done, again)


def test_early_stopped_checkpoint_is_also_complete(digits, tmp_path):
    """A run stopped by a callback after epoch 2 of 4, re-run with its checkpoint, takes no step: it has ended."""
    ck = tmp_path / "ck.pt"
    done = net()
    h = run(done, digits, QUICK.replace(epochs=4), callbacks=[stop_at(2)], checkpoint=ck)
    again, count = net(), Count()
    h2 = run(again, digits, QUICK.replace(epochs=4), callbacks=[stop_at(2), count], checkpoint=ck)
    assert count.iterations == []
    pd.testing.assert_frame_equal(h, h2)
    assert same_state(done, again)


# ---------------------------------------------------------------- 8. evaluate

class Probe(nn.Module):
    "Wraps a model and records, at each forward, whether inference mode is on and the training flag."
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append((torch.is_inference_mode_enabled(), self.training))
        return self.inner(x)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_matches_manual_under_inference_mode_and_restores_mode(training, digits):
    """evaluate returns the mean CE and accuracy, runs in inference and eval mode, and restores model.training."""
    model = Probe(net())
    model.train(training)
    out = evaluate(model, digits["test"], batch_size=100)
    assert model.seen and all(s == (True, False) for s in model.seen) and len(model.seen) == 4
    assert model.training is training and model.inner.training is training
    loss, acc = manual_eval(model.inner, digits["test"])
    assert out["loss"] == pytest.approx(loss, rel=1e-5) and out["acc"] == pytest.approx(acc, abs=1e-12)
    assert set(out) == {"loss", "acc"}


def test_evaluate_accepts_a_loader_in_any_order(digits):
    """A TensorLoader, shuffled or not, in any batch size, gives the split's numbers."""
    model = net()
    run(model, digits, QUICK.replace(epochs=1))
    ref = evaluate(model, digits["test"])
    for ld in (TensorLoader(digits["test"], 64, shuffle=False, device="cpu"),
               TensorLoader(digits["test"], 7, shuffle=True, seed=3, device="cpu")):
        got = evaluate(model, ld)
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5) and got["acc"] == ref["acc"]


def test_evaluate_restores_mode_after_an_error(digits):
    """If the model fails mid-evaluation, its training flag is still restored."""
    class Boom(nn.Module):
        def forward(self, x): raise RuntimeError("boom")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), Boom())
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, digits["test"])
    assert model.training


# ---------------------------------------------------------------- 9. bad input

def test_fit_bad_input(digits):
    """Missing 'train', a mask naming a missing tensor, mask= on a scored model, a bad extra_loss or recipe: ValueError."""
    with pytest.raises(ValueError, match="'train'"):
        run(net(), {"test": digits["test"]})
    with pytest.raises(ValueError, match="'train'"):
        run(net(), {"train": (digits["train"].x, digits["train"].y)})
    with pytest.raises(ValueError, match="'nope.weight'"):
        run(net(), digits, mask={"nope.weight": torch.ones(3, dtype=torch.bool)})
    scored = to_masked(net(), rule="round", seed=0)
    with pytest.raises(ValueError, match="scores"):
        run(scored, digits, mask=random_mask(net(), 0.5))
    with pytest.raises(ValueError, match="extra_loss=3"):
        run(net(), digits, extra_loss=3)
    with pytest.raises(ValueError, match="extra_loss="):
        run(net(), digits, extra_loss={"a": 3})
    with pytest.raises(ValueError) as e:
        run(net(), digits, "fast")
    assert "'fast'" in str(e.value) and "cpu" in str(e.value)
    with pytest.raises(ValueError, match="recipe=3"):
        run(net(), digits, 3)
    with pytest.raises(ValueError, match="trains='scores'"):
        run(net(), digits, QUICK.replace(trains="scores"))


# ---------------------------------------------------------------- 10. mixed precision on the CPU

def test_amp_on_cpu_runs_in_bfloat16_and_learns(digits):
    """amp=True on the CPU computes in bfloat16 autocast, keeps float32 weights, and the loss goes down."""
    model = net()
    dtypes = []
    handle = model.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
    h = run(model, digits, QUICK.replace(epochs=4), amp=True)
    handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    loss = values(h, "train", "loss")
    assert all(b < a for a, b in zip(loss, loss[1:])) and loss[-1] < 0.5 * loss[0]
    assert values(h, "test", "acc")[-1] > 0.9


# ---------------------------------------------------------------- 11. the acceptance run

@pytest.mark.slow
def test_cpu_recipe_lenet_fashion_mnist_reaches_88_percent(fmnist):
    """Dense LeNet-300-100 with the cpu recipe reaches >= 88% test accuracy on Fashion-MNIST (the issue's acceptance)."""
    train, test = fmnist
    model = get_model("lenet-300-100", in_channels=1, input_size=28, seed=0)
    torch.set_num_threads(2)  # big enough to gain from both cores (the module fixture restores the setting)
    with Timer() as t:
        h = fit(model, {"train": train, "test": test}, "cpu", progress=False)
    acc = values(h, "test", "acc")
    print(f"test accuracy {acc[-1]:.4f} after {len(acc)} epochs; wall time {t.elapsed:.1f} s")
    assert len(acc) == RECIPES["cpu"].epochs
    assert acc[-1] >= 0.88
