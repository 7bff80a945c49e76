"""paper_repro.models: the papers' parameter counts, shapes, initialisations, options, prunable weights, errors."""
import copy
import math
import re

import pytest
import torch
import torchvision
from torch import nn

from paper_repro.models import (INITS, MODELS, PadShortcut, count_parameters, dense, dense_forward, fans, get_model,
                                initialize, kaiming_normal, prunable_weights, same_state, signed_constant,
                                unsigned_constant, xavier_normal)

NAMES = list(MODELS)
NAMES_WITH = {opt: [n for n in NAMES if opt in MODELS[n].options] for opt in ("affine_bn", "shortcut", "stem")}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


pytestmark = pytest.mark.usefixtures("one_thread")


def small(name, **kw):
    "The model at width 0.25 on the first input the papers give it (fast to build and run)."
    c, side, classes = MODELS[name].inputs[0]
    kw = {"in_channels": c, "input_size": side, "num_classes": classes, "width": 0.25, "seed": 0, **kw}
    return get_model(name, **kw)


def batch(name, n=2, seed=0):
    c, side, _ = MODELS[name].inputs[0]
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))


def layers(model):
    "(name, module) of every Conv2d/Linear, in module order."
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ---------------------------------------------------------------- 1. the papers' parameter counts

@pytest.mark.parametrize("name,kw,expected", [
    ("lenet-300-100", dict(in_channels=1, input_size=28), 266_610),
    ("conv2", dict(in_channels=1, input_size=28), 3_317_450),
    ("conv4", dict(in_channels=1, input_size=28), 1_933_258),
    ("conv6", dict(in_channels=1, input_size=28), 1_802_698),
    ("conv2", {}, 4_301_642),
    ("conv4", {}, 2_425_930),
    ("conv6", {}, 2_262_602),
    ("vgg11", {}, 9_231_114),
    ("vgg13", {}, 9_416_010),
    ("vgg16", {}, 14_728_266),
    ("resnet18", {}, 11_181_642),
    ("resnet50", dict(num_classes=1000, input_size=224), 25_557_032),
])
def test_paper_parameter_counts(name, kw, expected):
    assert count_parameters(get_model(name, **kw)) == expected


@pytest.mark.parametrize("name,paper", [("resnet20", 274_000), ("conv4", 2_400_000)])
def test_maene_rounded_counts_within_one_and_a_half_percent(name, paper):
    n = count_parameters(get_model(name))
    assert abs(n - paper) / paper <= 0.015, n


def test_rare_gems_resnet20_count_derived_by_hand():
    m = get_model("resnet20", shortcut="A", bias=False, affine_bn=False, fc_as_conv=True)
    k = 3 * 3
    stem = 3 * 16 * k
    stage1 = 3 * 2 * (16 * 16 * k)
    stage2 = 16 * 32 * k + (3 * 2 - 1) * (32 * 32 * k)
    stage3 = 32 * 64 * k + (3 * 2 - 1) * (64 * 64 * k)
    classifier = 64 * 10  # 1x1 conv, no bias
    expected = stem + stage1 + stage2 + stage3 + classifier
    w = prunable_weights(m)
    assert sum(p.numel() for p in w.values()) == expected
    assert len(w) == 1 + 3 * 3 * 2 + 1 == 20
    assert count_parameters(m) == expected  # no biases, no BatchNorm gamma/beta, no shortcut convs
    assert all(p.dim() == 4 for p in w.values())  # every prunable tensor is a conv, the classifier included


@pytest.mark.parametrize("name,kw", [
    ("vgg16-gems", {}),
    ("mobilenet-v2", dict(bias=False, affine_bn=False, fc_as_conv=True)),
    ("resnet32", dict(shortcut="A", bias=False, affine_bn=False, fc_as_conv=True)),
])
def test_rare_gems_settings_make_every_parameter_prunable(name, kw):
    m = get_model(name, width=0.5, seed=0, **kw)
    assert count_parameters(m) == sum(p.numel() for p in prunable_weights(m).values()) > 0


# prunable tensors per model, derived from the architectures (stem + body + shortcut convs + classifier)
PRUNABLE_TENSORS = {
    "lenet-300-100": 2 + 1,
    "small-cnn": 2 + 1 + 1,
    "conv2": 2 * 1 + 2 + 1, "conv4": 2 * 2 + 2 + 1, "conv6": 2 * 3 + 2 + 1,
    "vgg11": 8 + 1, "vgg13": 10 + 1, "vgg16": 13 + 1, "vgg19": 16 + 1, "vgg16-gems": 13 + 1,
    "resnet20": 1 + 3 * 3 * 2 + 2 + 1, "resnet32": 1 + 3 * 5 * 2 + 2 + 1,
    "resnet18": 1 + 4 * 2 * 2 + 3 + 1, "resnet50": 1 + (3 + 4 + 6 + 3) * 3 + 4 + 1,
    "wrn-28-2": 1 + 3 * 4 * 2 + 3 + 1,
    "mobilenet-v2": 1 + 17 * 3 + 4 + 1 + 1,  # shortcut convs where a stride-1 block changes width: 32->16, 16->24, 64->96, 160->320
    "mobilenet-v1": 1 + 13 * 2 + 1,
}


def test_every_model_has_an_expected_prunable_tensor_count():
    assert set(PRUNABLE_TENSORS) == set(MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_prunable_tensor_count(name):
    assert len(prunable_weights(small(name))) == PRUNABLE_TENSORS[name]


# ---------------------------------------------------------------- 2. forward shapes

def _model_inputs():
    return [pytest.param(n, inp, id=f"{n}-{inp[0]}x{inp[1]}x{inp[1]}-{inp[2]}") for n in NAMES for inp in MODELS[n].inputs]


@pytest.mark.parametrize("name,inp", _model_inputs())
def test_forward_shape_on_every_paper_input(name, inp):
    c, side, classes = inp
    assert side >= MODELS[name].min_input
    m = get_model(name, num_classes=classes, in_channels=c, input_size=side, seed=0).eval()
    n = 1 if side >= 224 else 2
    with torch.no_grad():
        y = m(torch.randn(n, c, side, side))
    assert y.shape == (n, classes)
    assert torch.isfinite(y).all()


def test_the_paper_inputs_cover_mnist_cifar_tiny_imagenet_and_imagenet():
    seen = {inp for spec in MODELS.values() for inp in spec.inputs}
    assert {(1, 28, 10), (3, 32, 10), (3, 32, 100), (3, 64, 200), (3, 224, 1000)} <= seen


# ---------------------------------------------------------------- 3. initialisations

def _f32(x):
    return torch.tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("name", ["resnet20", "vgg16-gems"])
def test_signed_constant_takes_exactly_two_values_per_layer(name):
    m = get_model(name, init="signed_constant", seed=0)
    w = prunable_weights(m)
    assert len(w) == PRUNABLE_TENSORS[name]
    for n, p in w.items():
        sigma = _f32(math.sqrt(2 / fans(p)[0]))
        values = set(p.detach().unique().tolist())
        assert values == {sigma.item(), -sigma.item()}, n
    big = max(w.values(), key=lambda p: p.numel())
    k, plus = big.numel(), int((big > 0).sum())
    assert abs(plus - k / 2) <= 4 * math.sqrt(k) / 2


def _large_conv_weight(**kw):
    "The last 512x512x3x3 conv of VGG-16 (fan-in 4608, 2.36M weights), built through get_model."
    m = get_model("vgg16", seed=0, **kw)
    w = [p for p in prunable_weights(m).values() if tuple(p.shape) == (512, 512, 3, 3)][-1]
    return w.detach()


def test_kaiming_normal_variance_is_two_over_fan_in():
    w = _large_conv_weight()
    target = 2 / (512 * 9)
    assert abs(w.var().item() / target - 1) < 0.05
    assert abs(w.mean().item()) < 0.05 * math.sqrt(target)


@pytest.mark.parametrize("density", [0.5, 0.1])
def test_init_density_scales_the_variance(density):
    w = _large_conv_weight(init_density=density)
    target = 2 / (512 * 9 * density)
    assert abs(w.var().item() / target - 1) < 0.05
    m = get_model("resnet20", init="signed_constant", init_density=density, seed=0)
    for p in prunable_weights(m).values():
        assert torch.equal(p.abs(), torch.full_like(p, _f32(math.sqrt(2 / (fans(p)[0] * density))).item()))


def test_init_mode_fan_out_uses_the_fan_out():
    m = get_model("vgg16", init="signed_constant", init_mode="fan_out", seed=0)
    assert any(fans(p)[0] != fans(p)[1] for p in prunable_weights(m).values())  # the test can tell the fans apart
    for n, p in prunable_weights(m).items():
        assert torch.equal(p.abs(), torch.full_like(p, _f32(math.sqrt(2 / fans(p)[1])).item())), n
    m = get_model("vgg16", init_mode="fan_out", seed=0)
    w = [p for p in prunable_weights(m).values() if tuple(p.shape) == (512, 256, 3, 3)][0].detach()
    assert abs(w.var().item() / (2 / (512 * 9)) - 1) < 0.05  # fan_out 4608, fan_in would give 2/2304


def test_xavier_normal_variance():
    m = get_model("vgg16", init="xavier_normal", seed=0)
    w = [p for p in prunable_weights(m).values() if tuple(p.shape) == (512, 256, 3, 3)][0].detach()
    assert abs(w.var().item() / (2 / (256 * 9 + 512 * 9)) - 1) < 0.05


def test_unsigned_constant_is_one_positive_value_per_layer():
    m = get_model("conv4", init="unsigned_constant", seed=0)
    for n, p in prunable_weights(m).items():
        v = p.detach().unique()
        assert v.numel() == 1 and v.item() > 0 and v.item() == _f32(math.sqrt(2 / fans(p)[0])).item(), n


def test_init_functions_work_on_bare_tensors_and_honour_the_generator():
    for f in INITS.values():
        a = f(torch.empty(64, 32, 3, 3), generator=torch.Generator().manual_seed(1))
        b = f(torch.empty(64, 32, 3, 3), generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and torch.isfinite(a).all()
    lin = kaiming_normal(torch.empty(1000, 800), generator=torch.Generator().manual_seed(0))
    assert abs(lin.var().item() / (2 / 800) - 1) < 0.05
    x = xavier_normal(torch.empty(1000, 800), generator=torch.Generator().manual_seed(0))
    assert abs(x.var().item() / (2 / 1800) - 1) < 0.05
    assert set(signed_constant(torch.empty(10, 50)).unique().tolist()) == {_f32(0.2).item(), -_f32(0.2).item()}
    assert unsigned_constant(torch.empty(10, 50)).unique().tolist() == [_f32(0.2).item()]


def test_fans_of_linear_conv_and_depthwise_weights():
    assert fans(torch.empty(10, 784)) == (784, 10)
    assert fans(torch.empty(64, 3, 3, 3)) == (27, 576)
    assert fans(torch.empty(32, 1, 3, 3)) == (9, 288)  # depthwise: in/groups = 1
    with pytest.raises(ValueError, match=re.escape("(5,)")):
        fans(torch.empty(5))


@pytest.mark.parametrize("name", ["resnet20", "conv2", "mobilenet-v2"])
def test_same_seed_same_weights_different_seed_different(name):
    a, b, c = (get_model(name, width=0.5, seed=s) for s in (0, 0, 1))
    assert same_state(a, b)
    assert not same_state(a, c)
    for (n, p), q in zip(prunable_weights(a).items(), prunable_weights(c).values()):
        assert not torch.equal(p, q), n  # every layer differs, not just some


def test_without_seed_the_global_generator_governs():
    torch.manual_seed(5); a = get_model("resnet20", width=0.5)
    torch.manual_seed(5); b = get_model("resnet20", width=0.5)
    torch.manual_seed(6); c = get_model("resnet20", width=0.5)
    d = get_model("resnet20", width=0.5)
    assert same_state(a, b) and not same_state(a, c) and not same_state(c, d)


def test_get_model_with_a_seed_leaves_the_global_generator_alone():
    torch.manual_seed(11)
    state = torch.get_rng_state()
    for name in ("resnet20", "conv4", "lenet-300-100", "mobilenet-v1"):
        get_model(name, width=0.5, seed=3, bias_init="default", bn_init="uniform")
    assert torch.equal(torch.get_rng_state(), state)
    x = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), x)


def test_bn_init_uniform_and_ones():
    m = get_model("resnet20", bn_init="uniform", seed=0)
    bns = [b for b in m.modules() if isinstance(b, NORMS)]
    assert len(bns) == 1 + 18 + 2
    gammas = torch.cat([b.weight.detach() for b in bns])
    assert ((gammas >= 0) & (gammas <= 1)).all() and gammas.unique().numel() > 1
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bns)
    m = get_model("resnet20", seed=0)  # bn_init="ones" by default
    for b in m.modules():
        if isinstance(b, NORMS):
            assert torch.equal(b.weight, torch.ones_like(b.weight)) and torch.equal(b.bias, torch.zeros_like(b.bias))
            assert torch.equal(b.running_mean, torch.zeros_like(b.running_mean))
            assert torch.equal(b.running_var, torch.ones_like(b.running_var))


@pytest.mark.parametrize("name", ["conv4", "lenet-300-100", "vgg11"])
def test_bias_init_default_and_zeros(name):
    m = get_model(name, bias_init="default", width=0.5, seed=0)
    mods = [mod for _, mod in layers(m) if mod.bias is not None]
    assert mods
    for mod in mods:
        bound = 1 / math.sqrt(fans(mod.weight)[0])
        assert mod.bias.abs().max() <= bound and (mod.bias != 0).any()
    m = get_model(name, width=0.5, seed=0)  # bias_init="zeros" by default
    assert all(torch.equal(mod.bias, torch.zeros_like(mod.bias)) for _, mod in layers(m) if mod.bias is not None)


def test_initialize_works_on_other_models_and_rejects_unknown_tensors():
    tv = initialize(torchvision.models.resnet18(num_classes=10), init="signed_constant", seed=0)
    for p in prunable_weights(tv).values():
        assert torch.equal(p.abs(), torch.full_like(p, _f32(math.sqrt(2 / fans(p)[0])).item()))
    odd = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"1\.weight"):
        initialize(odd)


# ---------------------------------------------------------------- 4. options

def test_width_scales_resnet20_channels():
    m = get_model("resnet20", width=0.5, seed=0)
    assert m.conv1.out_channels == 8
    assert [getattr(m, f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3)] == [8, 16, 32]
    assert m.conv1.in_channels == 3 and m.fc.in_features == 32 and m.fc.out_features == 10  # inputs/classes never scale


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_strictly_increases_with_width(name):
    c, side, classes = MODELS[name].inputs[0]
    counts = [count_parameters(get_model(name, num_classes=classes, in_channels=c, input_size=side, width=w, seed=0))
              for w in (0.25, 0.5, 1)]
    assert counts[0] < counts[1] < counts[2], counts


@pytest.mark.parametrize("name", NAMES)
def test_fc_as_conv_is_the_same_map_as_linear(name):
    lin = small(name, fc_as_conv=False, num_classes=7).eval()
    cnv = small(name, fc_as_conv=True, num_classes=7).eval()
    name_last, last = list(prunable_weights(cnv).items())[-1]
    fc = cnv.get_submodule(name_last.rsplit(".", 1)[0])
    assert isinstance(fc, nn.Conv2d) and fc.kernel_size == (1, 1)
    lin_last = list(prunable_weights(lin).values())[-1]
    assert tuple(last.shape) == (7, lin_last.shape[1], 1, 1)
    target = cnv.state_dict()
    assert target.keys() == lin.state_dict().keys()
    cnv.load_state_dict({k: v.reshape(target[k].shape) for k, v in lin.state_dict().items()}, strict=True)
    x = batch(name)
    with torch.no_grad():
        torch.testing.assert_close(cnv(x), lin(x), rtol=1e-4, atol=1e-5)


def test_dense_and_dense_forward():
    lin, cnv = dense(6, 4), dense(6, 4, as_conv=True)
    assert isinstance(lin, nn.Linear) and isinstance(cnv, nn.Conv2d) and cnv.weight.shape == (4, 6, 1, 1)
    assert dense(6, 4, bias=False).bias is None and dense(6, 4, bias=False, as_conv=True).bias is None
    with torch.no_grad():
        cnv.weight.copy_(lin.weight[:, :, None, None]); cnv.bias.copy_(lin.bias)
    x = torch.randn(5, 6, 1, 1)  # anything that flattens to N x 6
    torch.testing.assert_close(dense_forward(cnv, x), dense_forward(lin, x))
    assert dense_forward(cnv, x).shape == (5, 4)


@pytest.mark.parametrize("name", NAMES_WITH["affine_bn"])
def test_affine_bn_false_leaves_batchnorm_without_parameters(name):
    affine, plain = small(name, affine_bn=True), small(name, affine_bn=False)
    bns = [b for b in plain.modules() if isinstance(b, NORMS)]
    assert bns and all(b.weight is None and b.bias is None for b in bns)
    assert all(b.running_mean is not None for b in bns)  # still normalises with running statistics
    channels = sum(b.num_features for b in bns)
    assert count_parameters(affine) - count_parameters(plain) == 2 * channels


@pytest.mark.parametrize("name", NAMES)
def test_bias_false_removes_every_bias(name):
    plain = small(name, bias=False)
    assert all(mod.bias is None for _, mod in layers(plain))
    with_bias = small(name, bias=True)
    biased = [mod for _, mod in layers(with_bias) if mod.bias is not None]
    assert biased  # at least the classifier has one
    assert count_parameters(with_bias) - count_parameters(plain) == sum(m.bias.numel() for m in biased)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_state_dict_loads_into_torchvision(name):
    ours = get_model(name, num_classes=10, seed=0).eval()
    tv = getattr(torchvision.models, name)(num_classes=10).eval()
    tv.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)
    # and back: torchvision's weights in our model
    back = get_model(name, num_classes=10, seed=1)
    back.load_state_dict(tv.state_dict(), strict=True)
    assert same_state(back, ours)


def test_stem_cifar_is_a_3x3_conv_without_pooling():
    m = get_model("resnet18", stem="cifar", seed=0).eval()
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    seen = {}
    m.layer1.register_forward_pre_hook(lambda mod, args: seen.update(layer1=args[0].shape))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.maxpool(x), x)
        m(x)
    assert seen["layer1"][-2:] == (32, 32)  # nothing between the stem and layer1 reduces the side
    imagenet = get_model("resnet18", seed=0)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert count_parameters(imagenet) - count_parameters(m) == 64 * 3 * (7 * 7 - 3 * 3)


def test_shortcut_a_has_no_projection_and_b_has_one():
    a, b = get_model("resnet20", shortcut="A", seed=0), get_model("resnet20", shortcut="B", seed=0)
    assert len(prunable_weights(b)) - len(prunable_weights(a)) == 2
    assert count_parameters(b) - count_parameters(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert a.eval()(x).shape == b.eval()(x).shape == (2, 10)


def test_option_a_shortcut_subsamples_and_pads_both_sides_with_zeros():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # He et al.: planes // 4 zero channels on each side
    assert not out[:, :8].any() and not out[:, 24:].any()


# ---------------------------------------------------------------- 5. prunable_weights

@pytest.mark.parametrize("name", NAMES)
def test_prunable_order_first_stem_last_classifier(name):
    c, side, _ = MODELS[name].inputs[0]
    m = get_model(name, num_classes=7, in_channels=2, input_size=side, width=0.25, seed=0)
    w = prunable_weights(m)
    order = [n for n, _ in m.named_modules()]
    idx = [order.index(n.rsplit(".", 1)[0]) for n in w]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)  # module order
    assert len(w) == len(layers(m))  # every conv and linear weight, nothing else
    names, params = list(w), list(w.values())
    first, last = params[0], params[-1]
    assert first.shape[1] == (2 * side * side if name == "lenet-300-100" else 2)  # the stem sees the image
    assert last.shape[0] == 7 and names[-1].startswith("fc")  # the classifier
    mods = dict(m.named_modules())
    assert all(p is mods[n.rsplit(".", 1)[0]].weight for n, p in w.items())  # the live parameters, not copies


@pytest.mark.parametrize("name", NAMES)
def test_prunable_order_is_the_forward_order(name):
    m = small(name).eval()
    called = []
    for n, mod in layers(m):
        mod.register_forward_pre_hook(lambda mod, args, n=n: called.append(f"{n}.weight"))
    with torch.no_grad():
        m(batch(name))
    assert called == list(prunable_weights(m))


def test_prunable_exclude():
    m = get_model("resnet20", seed=0)
    full = list(prunable_weights(m))
    assert full[0] == "conv1.weight" and full[-1] == "fc.weight"
    assert list(prunable_weights(m, exclude="first")) == full[1:]
    assert list(prunable_weights(m, exclude=["last"])) == full[:-1]
    assert list(prunable_weights(m, exclude=("first", "last"))) == full[1:-1]
    some = ["layer2.0.downsample.0.weight", "layer1.1.conv2.weight"]
    assert list(prunable_weights(m, exclude=some)) == [n for n in full if n not in some]
    assert list(prunable_weights(m, exclude=["first", "conv1.weight"])) == full[1:]
    assert list(prunable_weights(m, exclude=iter(["fc.weight"]))) == full[:-1]


def test_prunable_weights_on_a_torchvision_model():
    tv = torchvision.models.resnet18(num_classes=10)
    w = prunable_weights(tv)
    assert len(w) == PRUNABLE_TENSORS["resnet18"]
    assert list(w)[0] == "conv1.weight" and list(w)[-1] == "fc.weight"
    assert w["conv1.weight"] is tv.conv1.weight
    assert list(w) == list(prunable_weights(get_model("resnet18", seed=0)))
    assert len(prunable_weights(tv, exclude=["first", "last"])) == len(w) - 2


@pytest.mark.parametrize("bad", ["nope.weight", "fc.bias", "bn1.weight", "First"])
def test_prunable_unknown_exclude_names_it(bad):
    m = get_model("resnet20", width=0.25, seed=0)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        prunable_weights(m, exclude=["first", bad])


# ---------------------------------------------------------------- 6. engine-readiness contracts

@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_is_equal_and_independent(name):
    m = small(name)
    c = copy.deepcopy(m)
    assert same_state(m, c)
    ptrs = {t.data_ptr() for t in m.state_dict().values() if t.numel()}
    assert not ptrs & {t.data_ptr() for t in c.state_dict().values() if t.numel()}
    with torch.no_grad():
        for p in c.parameters(): p.add_(1)
    assert not same_state(m, c)
    assert same_state(m, small(name))  # the original is untouched


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips_through_a_file(name, tmp_path):
    m = small(name, bn_init="uniform", bias_init="default")
    m.train()(batch(name, n=4))  # move the BatchNorm running statistics off their defaults
    torch.save(m.state_dict(), tmp_path / "m.pt")
    fresh = small(name, seed=1)
    assert not same_state(fresh, m)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    assert same_state(fresh, m)
    x = batch(name, seed=1)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), m.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_one_sgd_step_changes_weights_with_a_finite_loss(name):
    m = small(name).train()
    _, _, classes = MODELS[name].inputs[0]
    x, y = batch(name, n=4), torch.tensor([0, 1, 2, 3]) % classes
    before = {n: p.detach().clone() for n, p in prunable_weights(m).items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(m(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    for n, p in prunable_weights(m).items():
        assert torch.isfinite(p).all() and not torch.equal(p, before[n]), n  # gradient reaches every layer


# ---------------------------------------------------------------- 7. bad input

def test_unknown_model_lists_the_known_names():
    with pytest.raises(ValueError, match="'resnet21'") as e:
        get_model("resnet21")
    assert all(n in str(e.value) for n in MODELS)


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), "1", None, True, [1]])
def test_bad_width(bad):
    with pytest.raises(ValueError, match=re.escape(f"width={bad!r}")):
        get_model("resnet20", width=bad)


@pytest.mark.parametrize("name,size", [("vgg16", 8), ("conv6", 4), ("vgg16-gems", 16), ("conv2", 1)])
def test_input_below_min_input(name, size):
    assert size < MODELS[name].min_input
    with pytest.raises(ValueError, match=f"input_size={size}\\b"):
        get_model(name, input_size=size)
    get_model(name, input_size=MODELS[name].min_input, width=0.25, seed=0)  # the minimum itself works


@pytest.mark.parametrize("name", ["vgg16", "conv6", "vgg16-gems"])
def test_min_input_runs(name):
    s = MODELS[name].min_input
    m = get_model(name, input_size=s, width=0.25, seed=0).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, s, s)).shape == (2, 10)


@pytest.mark.parametrize("name,option", [("conv4", "affine_bn"), ("resnet18", "shortcut"), ("resnet20", "stem"),
                                         ("vgg16", "dropout")])
def test_option_the_model_does_not_take(name, option):
    with pytest.raises(ValueError, match=re.escape(repr(option))) as e:
        get_model(name, **{option: True})
    assert all(o in str(e.value) for o in MODELS[name].options)


@pytest.mark.parametrize("name,kw,shown", [
    ("resnet20", dict(shortcut="C"), "'C'"),
    ("resnet20", dict(shortcut="a"), "'a'"),
    ("mobilenet-v2", dict(shortcut="A"), "'A'"),
    ("resnet18", dict(stem="tiny"), "'tiny'"),
    ("resnet50", dict(stem=None), "None"),
    ("resnet20", dict(bias="yes"), "'yes'"),
    ("vgg11", dict(affine_bn=1), "affine_bn=1"),
    ("conv2", dict(num_classes=0), "num_classes=0"),
    ("conv2", dict(num_classes=2.0), "num_classes=2.0"),
    ("conv2", dict(in_channels=0), "in_channels=0"),
    ("resnet20", dict(init="he_normal"), "'he_normal'"),
    ("resnet20", dict(init_mode="fan_avg"), "'fan_avg'"),
    ("resnet20", dict(init_density=0), "density=0"),
    ("resnet20", dict(init_density=1.5), "density=1.5"),
    ("resnet20", dict(bn_init="zeros"), "'zeros'"),
    ("conv2", dict(bias_init="kaiming"), "'kaiming'"),
])
def test_bad_values_are_named(name, kw, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        get_model(name, **kw)


@pytest.mark.parametrize("name", NAMES_WITH["shortcut"] + NAMES_WITH["stem"])
def test_every_listed_choice_builds(name):
    for option, allowed in MODELS[name].choices.items():
        assert MODELS[name].options[option] in allowed
        for value in allowed:
            m = small(name, **{option: value}).eval()
            with torch.no_grad():
                assert m(batch(name)).shape[0] == 2


def test_unknown_exclude_lists_each_name_once():
    """A small model's prunable names are listed in full, without repeating the last one."""
    with pytest.raises(ValueError) as e:
        prunable_weights(get_model("lenet-300-100", in_channels=1, input_size=28), exclude=("fc9.weight",))
    msg = str(e.value)
    assert "(hidden.0.weight, hidden.1.weight, fc.weight)" in msg and msg.count("fc.weight") == 1
