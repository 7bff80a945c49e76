"""paper_repro.data on the real Fashion-MNIST and digits: split sizes, validation split, the loader's order,
crops and flips, agreement with torchvision's transforms, and the search/fetch/error paths."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from paper_repro import data as D
from paper_repro.data import DataNotFoundError, TensorLoader, crop_flip, ensure_dataset, load_dataset


# ---- split sizes and the validation split -------------------------------------------------------------------------

def test_fashion_mnist_official_sizes(fmnist):
    train, test = fmnist
    assert (len(train), len(test)) == (60000, 10000)
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert train.class_counts().tolist() == [6000] * 10 and test.class_counts().tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"


def test_digits_has_1797_images_split_train_test_with_a_fixed_seed():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == round(0.2 * 1797)
    assert not set(tr.indices.tolist()) & set(te.indices.tolist())
    assert torch.equal(load_dataset("digits", "test", seed=5).indices, te.indices)  # `seed` never moves the test set
    assert tr.x.shape[1:] == (1, 8, 8) and int(tr.x.max()) == 255


@pytest.mark.parametrize("val_size,n_val", [(5000, 5000), (0.1, 6000)])
def test_validation_split_is_disjoint_stratified_and_seeded(fmnist, val_size, n_val):
    full = fmnist[0]
    fit = load_dataset("fashion-mnist", "train", val_size=val_size, seed=1)
    val = load_dataset("fashion-mnist", "val", val_size=val_size, seed=1)
    assert (len(fit), len(val)) == (60000 - n_val, n_val)
    assert not set(fit.indices.tolist()) & set(val.indices.tolist())
    assert torch.equal(torch.cat([fit.indices, val.indices]).sort().values, torch.arange(60000))
    assert torch.equal(val.x, full.x[val.indices]) and torch.equal(val.y, full.y[val.indices])
    assert val.class_counts().tolist() == [n_val // 10] * 10
    again = load_dataset("fashion-mnist", "val", val_size=val_size, seed=1)
    other = load_dataset("fashion-mnist", "val", val_size=val_size, seed=2)
    assert torch.equal(again.indices, val.indices) and not torch.equal(other.indices, val.indices)


def test_stratified_split_exact_size_with_uneven_classes():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 1)
    for size in range(1, 13):
        kept, held = D.stratified_split(y, size, seed=0)
        assert len(held) == size and len(kept) == 13 - size
        counts = torch.bincount(y[held], minlength=3).tolist()
        assert all(abs(c - size * n / 13) < 1 for c, n in zip(counts, (7, 5, 1)))  # proportional, rounded


# ---- TensorLoader ----------------------------------------------------------------------------------------------------

def _epochs(loader, n):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(n)]


def test_loader_same_seed_same_batches(fmnist):
    tr = fmnist[0]
    a = _epochs(TensorLoader(tr, batch_size=1000, crop=4, flip=True, seed=7, device="cpu"), 2)
    b = _epochs(TensorLoader(tr, batch_size=1000, crop=4, flip=True, seed=7, device="cpu"), 2)
    for ea, eb in zip(a, b):
        assert len(ea) == 60
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0][1], a[1][0][1])  # a new order every epoch
    c = TensorLoader(tr, batch_size=1000, crop=4, flip=True, seed=8, device="cpu")
    assert not torch.equal(next(iter(c))[1], a[0][0][1])
    c = TensorLoader(tr, batch_size=1000, crop=4, flip=True, seed=7, device="cpu")
    c.set_epoch(1)
    assert torch.equal(next(iter(c))[0], a[1][0][0])  # resuming at epoch 1 replays epoch 1


def test_loader_serves_every_example_once_per_epoch(fmnist):
    tr = fmnist[0]
    loader = TensorLoader(tr, batch_size=4096, seed=0, device="cpu")
    order = torch.cat([y for _, y in loader])
    assert len(order) == 60000 and torch.equal(order.sort().values, tr.y.sort().values)
    assert len(loader) == math.ceil(60000 / 4096)
    dl = TensorLoader(tr, batch_size=4096, drop_last=True, seed=0, device="cpu")
    sizes = [len(y) for _, y in dl]
    assert len(sizes) == 60000 // 4096 and set(sizes) == {4096}


def test_crops_stay_inside_the_padded_image(fmnist):
    """Every augmented image is a 28×28 window of its 36×36 padded original at an offset in {0..8}², found by search,
    not by trusting the loader's own plan."""
    tr = fmnist[0]
    loader = TensorLoader(tr, batch_size=64, crop=4, seed=3, device="cpu")
    x, _ = next(iter(loader))
    plan = loader.plan(0)
    assert 0 <= int(plan["top"].min()) and int(plan["top"].max()) <= 8
    assert 0 <= int(plan["left"].min()) and int(plan["left"].max()) <= 8
    assert {int(v) for v in plan["top"]} == set(range(9))  # all offsets are used
    for k in range(64):
        padded = loader.x[plan["order"][k], 0]
        hits = [(t, l) for t in range(9) for l in range(9) if torch.equal(padded[t:t + 28, l:l + 28], x[k, 0])]
        assert (int(plan["top"][k]), int(plan["left"][k])) in hits


def test_flips_are_exact_mirrors(fmnist):
    tr = fmnist[0]
    loader = TensorLoader(tr, batch_size=2000, flip=True, seed=0, device="cpu")  # flip only: no crop
    x, y = next(iter(loader))
    plan = loader.plan(0)
    stored = loader.x[plan["order"][:2000]]
    flipped = plan["flip"][:2000]
    assert torch.equal(x[flipped], stored[flipped].flip(-1)) and torch.equal(x[~flipped], stored[~flipped])
    assert abs(flipped.float().mean().item() - 0.5) < 0.05  # 2000 fair coins: 5 standard deviations is 0.056


def test_loader_matches_torchvision_transforms(fmnist):
    """At the same offsets, TensorLoader's pixels equal torchvision's RandomCrop(28, padding=4) + flip + ToTensor +
    Normalize on the PIL image."""
    import torchvision.transforms.functional as F
    tr = fmnist[0]
    loader = TensorLoader(tr, batch_size=32, crop=4, flip=True, seed=11, device="cpu")
    x, _ = next(iter(loader))
    plan = loader.plan(0)
    for k in range(32):
        img = F.to_pil_image(tr.x[plan["order"][k]])
        img = F.crop(F.pad(img, 4, fill=0), int(plan["top"][k]), int(plan["left"][k]), 28, 28)
        if plan["flip"][k]:
            img = F.hflip(img)
        ref = F.normalize(F.to_tensor(img), tr.mean, tr.std)
        assert torch.allclose(x[k], ref, atol=1e-6), k


def test_crop_flip_equals_per_image_slicing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 12, 14, generator=g)
    top, left = torch.randint(0, 5, (10,), generator=g), torch.randint(0, 7, (10,), generator=g)
    flip = torch.rand(10, generator=g) < 0.5
    out = crop_flip(x, top, left, flip, (8, 8))
    for k in range(10):
        ref = x[k, :, top[k]:top[k] + 8, left[k]:left[k] + 8]
        assert torch.equal(out[k], ref.flip(-1) if flip[k] else ref)


def test_loader_normalises_once_and_keeps_dtype_and_device(fmnist):
    te = fmnist[1]
    loader = TensorLoader(te, batch_size=10000, shuffle=False, device="cpu")
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.device.type == "cpu" and torch.equal(y, te.y)
    assert torch.allclose(x, (te.x.float() / 255 - 0.2860) / 0.3530)
    half = TensorLoader(te, batch_size=100, shuffle=False, device="cpu", dtype=torch.bfloat16, crop=2, flip=True)
    assert next(iter(half))[0].dtype == torch.bfloat16
    cl = TensorLoader(te, batch_size=100, crop=2, device="cpu", channels_last=True)
    assert next(iter(cl))[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kw,match", [
    (dict(batch_size=0), "batch_size=0"), (dict(batch_size=2.5), "batch_size=2.5"), (dict(crop=-2), "crop=-2"),
    (dict(batch_size=20000, drop_last=True), "leaves no batches"), (dict(mean=(0.1, 0.2), std=(1, 1)), "for 1 channels"),
    (dict(device="cuda:7"), "cuda:7"),
])
def test_loader_bad_input(fmnist, kw, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        TensorLoader(fmnist[1], **kw)


# ---- errors and the search order --------------------------------------------------------------------------------------

def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as e:
        load_dataset("cifar-10")
    for n in ("'cifar-10'", "caltech101", "cifar10", "cifar100", "digits", "fashion-mnist", "imagenet", "mnist", "tiny-imagenet"):
        assert n in str(e.value)


@pytest.mark.parametrize("split", ["valid", "training", "", "TEST"])
def test_unknown_split_lists_allowed(split):
    with pytest.raises(ValueError, match=f"split '{split}' is not a split of digits; allowed: train, val"):
        load_dataset("digits", split)


@pytest.mark.parametrize("val_size,match", [(-1, "val_size=-1"), (1.0, "val_size=1.0"), (1438, "val_size=1438"), ("10", "val_size='10'")])
def test_bad_val_size(val_size, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("digits", "train", val_size=val_size)


def test_an_explicit_root_is_the_only_place_searched(tmp_path):
    """Fashion-MNIST is installed system-wide, but asking for it in an empty folder must fail, not fall back."""
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion-mnist", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "fashion-mnist") in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "/usr/share/datasets" not in msg.split("to get it")[0]
    assert "apt-get install dataset-fashion-mnist" in msg


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    for where in ("mnist", "MNIST/raw", "MNIST"):
        assert str(tmp_path / where) in msg
    assert "download=True" in msg and "train-images-idx3-ubyte" in msg and "PAPER_REPRO_DATA" in msg


def _fake_entry(monkeypatch, tmp_path, **kw):
    """A copy of the fashion-mnist entry whose system folder is a temporary one (starting empty)."""
    info = dataclasses.replace(D.DATASETS["fashion-mnist"], name="fake-fmnist", system_dirs=(str(tmp_path / "sys"),), **kw)
    monkeypatch.setitem(D.DATASETS, "fake-fmnist", info)
    monkeypatch.setenv("PAPER_REPRO_DATA", str(tmp_path / "data"))
    return info


def _copy_fmnist(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())


def test_ensure_dataset_runs_the_system_install_when_allowed(tmp_path, monkeypatch):
    src = D.find_dataset("fashion-mnist")
    installed = []
    def fake_apt(pkg):
        installed.append(pkg); _copy_fmnist(src, tmp_path / "sys"); return None
    _fake_entry(monkeypatch, tmp_path)
    monkeypatch.setattr(D, "_can_apt", lambda: True)
    monkeypatch.setattr(D, "_apt_install", fake_apt)
    with pytest.raises(DataNotFoundError):
        ensure_dataset("fake-fmnist")  # not allowed to install: nothing happens
    assert installed == []
    assert ensure_dataset("fake-fmnist", system_install=True) == tmp_path / "sys"
    assert installed == ["dataset-fashion-mnist"]
    assert len(load_dataset("fake-fmnist", "test")) == 10000


def test_ensure_dataset_reports_each_failed_attempt(tmp_path, monkeypatch):
    def offline(dest):
        raise OSError("network is unreachable")
    _fake_entry(monkeypatch, tmp_path, download=offline)
    monkeypatch.setattr(D, "_can_apt", lambda: False)
    with pytest.raises(DataNotFoundError) as e:
        ensure_dataset("fake-fmnist", system_install=True, download=True)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist: skipped (needs root on Debian)" in msg
    assert "torchvision download into" in msg and "network is unreachable" in msg


def test_download_fills_the_data_root(tmp_path, monkeypatch):
    src = D.find_dataset("fashion-mnist")
    _fake_entry(monkeypatch, tmp_path, download=lambda dest: _copy_fmnist(src, dest / "FashionMNIST" / "raw"))
    assert ensure_dataset("fake-fmnist", download=True) == tmp_path / "data" / "FashionMNIST" / "raw"


def test_registry_shapes_and_stats_are_consistent():
    for name, info in D.DATASETS.items():
        c = info.input_shape[0]
        assert len(info.mean) == c and len(info.std) == c, name
        assert all(0 < s < 1 for s in info.std) and all(0 < m < 1 for m in info.mean), name


def test_loader_requires_uint8_pixels(fmnist):
    x, y = fmnist[1].x[:10], fmnist[1].y[:10]
    with pytest.raises(ValueError, match="uint8 pixels"):
        TensorLoader((x.float() / 255, y), mean=(0.5,), std=(0.5,), device="cpu")
