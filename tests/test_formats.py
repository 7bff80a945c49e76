"""On-disk format tests for `paper_repro.data`.

No real dataset files exist on the test machine, so every test writes a few tiny
files in the dataset's exact on-disk format under pytest's `tmp_path` and checks
that `load_dataset` reads back exactly what was written (torchvision and PIL serve
as independent oracles where they can read the same files offline).

Folder datasets cache decoded tensors under data_dir()/.cache; every test that
loads one points $PAPER_REPRO_DATA at tmp_path so nothing is written into the repo.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import paper_repro.data as data_mod
from paper_repro.data import (DATASETS, DataNotFoundError, ensure_dataset, find_dataset, get_info, load_dataset,
                              load_pickle, read_idx)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------

def idx_images(x: np.ndarray) -> bytes:
    "IDX3 uint8 images: magic 0x00000803, then N, rows, cols as big-endian int32, then the pixels."
    n, r, c = x.shape
    return struct.pack(">iiii", 0x00000803, n, r, c) + x.astype(np.uint8).tobytes()


def idx_labels(y: np.ndarray) -> bytes:
    "IDX1 uint8 labels: magic 0x00000801, then N as big-endian int32, then the labels."
    return struct.pack(">ii", 0x00000801, len(y)) + y.astype(np.uint8).tobytes()


def make_mnist_arrays(seed: int, n_train: int = 5, n_test: int = 3):
    rng = np.random.default_rng(seed)
    return dict(train=(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8)),
                t10k=(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)))


def write_mnist(folder: Path, arrays: dict, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in arrays.items():
        for stem, blob in ((f"{prefix}-images-idx3-ubyte", idx_images(x)), (f"{prefix}-labels-idx1-ubyte", idx_labels(y))):
            if gz: (folder/f"{stem}.gz").write_bytes(gzip.compress(blob))
            else: (folder/stem).write_bytes(blob)


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    "Point data_dir() (and so the decode cache) into tmp_path."
    d = tmp_path/"cache_root"
    monkeypatch.setenv("PAPER_REPRO_DATA", str(d))
    return d


def forbid_decoding(monkeypatch):
    "After this, any image decoding is an error: a load must come from the .pt cache."
    def boom(*a, **k): raise AssertionError("images were decoded again instead of being read from the cache")
    monkeypatch.setattr(data_mod, "_decode_images", boom)


# ----------------------------------------------------------------------------------------------------------------
# a hand-written emitter of Python-2 cPickle protocol-2 streams (the format of the real CIFAR files)
# ----------------------------------------------------------------------------------------------------------------

class Py2Pickle:
    """Emit, opcode by opcode, what Python 2's cPickle.dump(obj, f, 2) writes for CIFAR-like objects.

    A py2 `str` is a byte string: SHORT_BINSTRING 'U' (< 256 bytes) or BINSTRING 'T' (4-byte little-endian length).
    Python 3 `str` and `bytes` given here are both written as py2 `str`. A uint8 ndarray is written the way
    numpy 1.x under Python 2 reduced it: numpy.core.multiarray._reconstruct(ndarray, (0,), 'b') and then
    BUILD with (1, shape, dtype('u1', 0, 1) + its state, False, <raw bytes as a py2 str>).
    """

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo = 0

    def _put(self):
        self.memo += 1
        self.out += b"q" + bytes([self.memo]) if self.memo < 256 else b"r" + struct.pack("<I", self.memo)

    def _str(self, s):
        b = s.encode("latin1") if isinstance(s, str) else bytes(s)
        self.out += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
        self._put()

    def _int(self, i: int):
        if 0 <= i < 256: self.out += b"K" + bytes([i])
        elif 0 <= i < 65536: self.out += b"M" + struct.pack("<H", i)
        else: self.out += b"J" + struct.pack("<i", i)

    def _global(self, module: str, name: str):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        self._put()

    def _tuple(self, items):
        if 1 <= len(items) <= 3:
            for v in items: self.dump(v)
            self.out += b"\x85\x86\x87"[len(items) - 1:len(items)]  # TUPLE1/2/3
        else:
            self.out += b"("
            for v in items: self.dump(v)
            self.out += b"t"
        self._put()

    def _ndarray(self, a: np.ndarray):
        assert a.dtype == np.uint8
        self._global("numpy.core.multiarray", "_reconstruct")
        self._global("numpy", "ndarray")
        self._tuple((0,))
        self._str("b")
        self.out += b"\x87"; self._put()  # (ndarray, (0,), 'b')
        self.out += b"R"; self._put()     # REDUCE
        self.out += b"("                  # state: (1, shape, dtype, is_fortran, rawdata)
        self._int(1)
        self._tuple(a.shape)
        self._global("numpy", "dtype")
        self._str("u1"); self._int(0); self._int(1)
        self.out += b"\x87"; self._put()
        self.out += b"R"; self._put()
        self.out += b"("; self._int(3); self._str("|"); self.out += b"NNN"
        self._int(-1); self._int(-1); self._int(0)
        self.out += b"t"; self._put()
        self.out += b"b"                  # BUILD the dtype
        self.out += b"\x89"               # NEWFALSE: C order
        self._str(np.ascontiguousarray(a).tobytes())
        self.out += b"t"; self._put()
        self.out += b"b"                  # BUILD the array

    def dump(self, v):
        if isinstance(v, dict):
            self.out += b"}"; self._put()
            if v:
                self.out += b"("
                for k, val in v.items(): self.dump(k); self.dump(val)
                self.out += b"u"  # SETITEMS
        elif isinstance(v, list):
            self.out += b"]"; self._put()
            if v:
                self.out += b"("
                for x in v: self.dump(x)
                self.out += b"e"  # APPENDS
        elif isinstance(v, tuple): self._tuple(v)
        elif isinstance(v, np.ndarray): self._ndarray(v)
        elif isinstance(v, bool): self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, (int, np.integer)): self._int(int(v))
        elif isinstance(v, (str, bytes)): self._str(v)
        elif v is None: self.out += b"N"
        else: raise TypeError(type(v))

    @classmethod
    def dumps(cls, obj) -> bytes:
        p = cls(); p.dump(obj); p.out += b"."
        return bytes(p.out)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_BATCH_SIZES = {"data_batch_1": 2, "data_batch_2": 3, "data_batch_3": 1, "data_batch_4": 2, "data_batch_5": 2,
                       "test_batch": 3}


def make_cifar10_batches(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (name, n) in enumerate(CIFAR10_BATCH_SIZES.items()):
        out[name] = dict(batch_label=f"training batch {i + 1} of 5" if name != "test_batch" else "testing batch 1 of 1",
                         labels=[int(v) for v in rng.integers(0, 10, n)],
                         data=rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         filenames=[f"img_{name}_{j:06d}.png" for j in range(n)])
    return out


CIFAR10_META = dict(num_cases_per_batch=10000, label_names=CIFAR10_NAMES, num_vis=3072)


def write_cifar10(folder: Path, batches: dict, style: str = "py2") -> None:
    "style: 'py2' (hand-written cPickle stream, like the real files) or 'py3' (bytes keys, pickle.dumps protocol 2)."
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in [*batches.items(), ("batches.meta", CIFAR10_META)]:
        if style == "py2": blob = Py2Pickle.dumps(obj)
        else: blob = pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=2)
        (folder/name).write_bytes(blob)


def expected_cifar(batches: dict, names: list[str]):
    x = np.concatenate([batches[n]["data"] for n in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([batches[n]["labels"] for n in names]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture
def tv_cifar(monkeypatch):
    "torchvision's CIFAR classes with the md5 checks disabled (our files are not the real ones)."
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar_mod
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar_mod, "check_integrity", lambda *a, **k: True)  # used by _load_meta
    return tvd


# ----------------------------------------------------------------------------------------------------------------
# 1. MNIST / Fashion-MNIST (IDX)
# ----------------------------------------------------------------------------------------------------------------

def test_registry_knows_the_datasets():
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "caltech101", "imagenet"):
        assert get_info(name) is DATASETS[name]
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*mnist"):
        get_info("nope")


def test_read_idx_reads_header_and_body(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    p = tmp_path/"imgs-idx3-ubyte"; p.write_bytes(idx_images(x))
    assert p.read_bytes()[:16] == bytes.fromhex("00000803" "00000004" "0000001c" "0000001c")
    got = read_idx(p)
    assert got.dtype == np.uint8 and got.shape == (4, 28, 28) and np.array_equal(got, x)
    g = tmp_path/"imgs-idx3-ubyte.gz"; g.write_bytes(gzip.compress(idx_images(x)))
    assert np.array_equal(read_idx(g), x)


def test_mnist_plain_idx_in_MNIST_raw(tmp_path):
    arrays = make_mnist_arrays(seed=2)
    write_mnist(tmp_path/"MNIST"/"raw", arrays)
    assert find_dataset("mnist", root=tmp_path) == (tmp_path/"MNIST"/"raw").resolve()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[prefix]
        d = load_dataset("mnist", split, root=tmp_path)
        assert d.x.dtype == torch.uint8 and d.y.dtype == torch.int64
        assert tuple(d.x.shape) == (len(x), 1, 28, 28)
        assert torch.equal(d.x, torch.from_numpy(x).unsqueeze(1))
        assert torch.equal(d.y, torch.from_numpy(y.astype(np.int64)))
        assert d.name == "mnist" and d.split == split and len(d) == len(x)
        assert d.input_shape == (1, 28, 28) and d.num_classes == 10 and d.classes == tuple("0123456789")
        assert d.source == str((tmp_path/"MNIST"/"raw").resolve())
        assert torch.equal(d.indices, torch.arange(len(x)))
        assert torch.equal(d.class_counts(), torch.bincount(torch.from_numpy(y.astype(np.int64)), minlength=10))


def test_mnist_gzipped_idx_in_mnist(tmp_path):
    arrays = make_mnist_arrays(seed=3)
    write_mnist(tmp_path/"mnist", arrays, gz=True)
    assert sorted(p.name for p in (tmp_path/"mnist").iterdir()) == sorted(
        f"{p}-{k}.gz" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
    assert find_dataset("mnist", root=tmp_path) == (tmp_path/"mnist").resolve()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[prefix]
        d = load_dataset("mnist", split, root=tmp_path)
        assert tuple(d.x.shape) == (len(x), 1, 28, 28)
        assert torch.equal(d.x[:, 0], torch.from_numpy(x))
        assert d.y.tolist() == y.tolist()


def test_mnist_layout_search_order(tmp_path):
    "'mnist' comes before 'MNIST/raw' in the search order."
    write_mnist(tmp_path/"MNIST"/"raw", make_mnist_arrays(seed=4))
    arrays = make_mnist_arrays(seed=5)
    write_mnist(tmp_path/"mnist", arrays, gz=True)
    d = load_dataset("mnist", "train", root=tmp_path)
    assert d.source == str((tmp_path/"mnist").resolve())
    assert torch.equal(d.x[:, 0], torch.from_numpy(arrays["train"][0]))


@pytest.mark.parametrize("name,tv_class", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_matches_torchvision(tmp_path, name, tv_class):
    import torchvision.datasets as tvd
    arrays = make_mnist_arrays(seed=6)
    write_mnist(tmp_path/tv_class/"raw", arrays)  # torchvision reads root/<Class>/raw/ (uncompressed, no checksums)
    for train in (True, False):
        ref = getattr(tvd, tv_class)(str(tmp_path), train=train, download=False)
        d = load_dataset(name, "train" if train else "test", root=tmp_path)
        assert torch.equal(d.x[:, 0], ref.data)
        assert torch.equal(d.y, ref.targets.long())
        if name == "fashion-mnist": assert d.classes == tuple(ref.classes)


def test_fashion_mnist_layouts_and_classes(tmp_path):
    arrays = make_mnist_arrays(seed=7)
    write_mnist(tmp_path/"fashion-mnist", arrays, gz=True)
    d = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert d.source == str((tmp_path/"fashion-mnist").resolve())
    assert torch.equal(d.x[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert d.y.tolist() == arrays["t10k"][1].tolist()
    assert d.classes == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def test_mnist_truncated_images_file_raises(tmp_path):
    folder = tmp_path/"MNIST"/"raw"
    write_mnist(folder, make_mnist_arrays(seed=8))
    f = folder/"train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError) as e:
        load_dataset("mnist", "train", root=tmp_path)
    assert str(f.resolve()) in str(e.value)
    assert "(5, 28, 28)" in str(e.value)  # the header's shape
    load_dataset("mnist", "test", root=tmp_path)  # the other split is untouched


def test_mnist_gz_truncated_images_file_raises(tmp_path):
    folder = tmp_path/"mnist"
    write_mnist(folder, make_mnist_arrays(seed=9), gz=True)
    f = folder/"t10k-images-idx3-ubyte.gz"
    x = make_mnist_arrays(seed=9)["t10k"][0]
    f.write_bytes(gzip.compress(idx_images(x)[:-1]))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", root=tmp_path)


def test_idx_truncated_inside_header_raises_valueerror(tmp_path):
    p = tmp_path/"train-images-idx3-ubyte"
    p.write_bytes(idx_images(np.zeros((2, 28, 28), np.uint8))[:6])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        read_idx(p)


def test_mnist_not_idx_raises(tmp_path):
    p = tmp_path/"train-labels-idx1-ubyte"
    p.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(p)


def test_mnist_label_count_mismatch_raises(tmp_path):
    folder = tmp_path/"MNIST"/"raw"
    arrays = make_mnist_arrays(seed=10)
    write_mnist(folder, arrays)
    (folder/"train-labels-idx1-ubyte").write_bytes(idx_labels(arrays["train"][1][:4]))  # 4 labels for 5 images
    with pytest.raises(ValueError) as e:
        load_dataset("mnist", "train", root=tmp_path)
    msg = str(e.value)
    assert str(folder.resolve()) in msg and "train" in msg
    assert "(5, 28, 28)" in msg and "(4,)" in msg


def test_mnist_label_count_mismatch_message_names_labels_file(tmp_path):
    folder = tmp_path/"MNIST"/"raw"
    arrays = make_mnist_arrays(seed=10)
    write_mnist(folder, arrays)
    (folder/"train-labels-idx1-ubyte").write_bytes(idx_labels(arrays["train"][1][:4]))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", "train", root=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# 2. CIFAR-10 / CIFAR-100 (pickles)
# ----------------------------------------------------------------------------------------------------------------

def test_py2_emitter_writes_a_real_python2_pickle():
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    obj = dict(batch_label="training batch 1 of 5", labels=[6, 9, 300], data=data, filenames=["a.png", "b.png", "c.png"])
    blob = Py2Pickle.dumps(obj)
    pickletools.dis(blob, out=io.StringIO())  # parses, stack and memo consistent
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(blob)]
    names = {n for n, _ in ops}
    assert ops[0] == ("PROTO", 2) and ops[-1] == ("STOP", None)
    assert not names & {"BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINBYTES", "SHORT_BINBYTES", "STACK_GLOBAL"}
    assert ("SHORT_BINSTRING", "data") in ops and ("SHORT_BINSTRING", "labels") in ops
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops and ("GLOBAL", "numpy ndarray") in ops
    assert ("GLOBAL", "numpy dtype") in ops
    assert ("BINSTRING", data.tobytes().decode("latin1")) in ops  # raw bytes as a py2 str of 9216 bytes
    # what torchvision does
    back = pickle.loads(blob, encoding="latin1")
    assert set(back) == {"batch_label", "labels", "data", "filenames"} and all(type(k) is str for k in back)
    assert isinstance(back["data"], np.ndarray) and back["data"].dtype == np.uint8 and back["data"].shape == (3, 3072)
    assert np.array_equal(back["data"], data)
    assert back["labels"] == [6, 9, 300] and back["filenames"] == ["a.png", "b.png", "c.png"]
    assert back["batch_label"] == "training batch 1 of 5"
    # and the library's safe loader agrees
    safe = load_pickle_bytes(blob)
    assert set(safe) == set(back) and np.array_equal(safe["data"], data) and safe["labels"] == [6, 9, 300]


def load_pickle_bytes(blob: bytes) -> dict:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)/"blob"; p.write_bytes(blob)
        return load_pickle(p)


@pytest.fixture
def cifar10_root(tmp_path):
    batches = make_cifar10_batches(seed=12)
    write_cifar10(tmp_path/"cifar-10-batches-py", batches, style="py2")
    return tmp_path, batches


def test_cifar10_python2_pickles(cifar10_root):
    root, batches = cifar10_root
    meta = (root/"cifar-10-batches-py"/"batches.meta").read_bytes()
    assert pickle.loads(meta, encoding="latin1") == CIFAR10_META
    for split, names in (("train", TRAIN_BATCHES), ("test", ["test_batch"])):
        x, y = expected_cifar(batches, names)
        d = load_dataset("cifar10", split, root=root)
        assert d.x.dtype == torch.uint8 and d.y.dtype == torch.int64
        assert tuple(d.x.shape) == (sum(CIFAR10_BATCH_SIZES[n] for n in names), 3, 32, 32)
        assert torch.equal(d.x, x) and torch.equal(d.y, y)
        assert d.classes == tuple(CIFAR10_NAMES)
        assert d.source == str((root/"cifar-10-batches-py").resolve())
        assert torch.equal(d.indices, torch.arange(len(y)))
    # the channel layout: the first 1024 bytes of a row are the red plane, row-major
    d = load_dataset("cifar10", "train", root=root)
    row = batches["data_batch_1"]["data"][1]
    assert d.x[1, 0, 0, 5].item() == row[5] and d.x[1, 1, 2, 3].item() == row[1024 + 2*32 + 3]
    assert d.x[1, 2, 31, 31].item() == row[3071]


def test_cifar10_matches_torchvision(cifar10_root, tv_cifar):
    root, _ = cifar10_root
    for train in (True, False):
        ref = tv_cifar.CIFAR10(str(root), train=train, download=False)
        d = load_dataset("cifar10", "train" if train else "test", root=root)
        assert torch.equal(d.x, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
        assert d.y.tolist() == ref.targets
        assert list(d.classes) == ref.classes


def test_cifar10_other_layouts(tmp_path):
    batches = make_cifar10_batches(seed=13)
    write_cifar10(tmp_path/"cifar10", batches, style="py2")
    d = load_dataset("cifar10", "test", root=tmp_path)
    assert d.source == str((tmp_path/"cifar10").resolve())
    assert torch.equal(d.x, expected_cifar(batches, ["test_batch"])[0])


def test_cifar10_python3_pickles_load_identically(tmp_path):
    batches = make_cifar10_batches(seed=14)
    write_cifar10(tmp_path/"py2"/"cifar-10-batches-py", batches, style="py2")
    write_cifar10(tmp_path/"py3"/"cifar-10-batches-py", batches, style="py3")
    blob = (tmp_path/"py3"/"cifar-10-batches-py"/"data_batch_1").read_bytes()
    assert b"_codecs\nencode" in blob  # bytes keys under protocol 2
    for split in ("train", "test"):
        a = load_dataset("cifar10", split, root=tmp_path/"py2")
        b = load_dataset("cifar10", split, root=tmp_path/"py3")
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.classes == b.classes == tuple(CIFAR10_NAMES)
    raw = load_pickle(tmp_path/"py3"/"cifar-10-batches-py"/"data_batch_2")
    assert set(raw) == {"batch_label", "labels", "data", "filenames"}


def test_cifar10_python3_meta_with_bytes_label_names(tmp_path):
    folder = tmp_path/"cifar-10-batches-py"
    write_cifar10(folder, make_cifar10_batches(seed=15), style="py3")
    meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    (folder/"batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    d = load_dataset("cifar10", "test", root=tmp_path)
    assert d.classes == tuple(CIFAR10_NAMES)


def test_load_pickle_protocol5_numpy_array(tmp_path):
    arr = np.random.default_rng(16).integers(0, 256, (2, 3072), dtype=np.uint8)
    p = tmp_path/"data_batch_1"
    p.write_bytes(pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=5))
    got = load_pickle(p)
    assert np.array_equal(got["data"], arr) and got["labels"] == [1, 2]


def test_cifar10_batch_with_wrong_label_count_raises(cifar10_root):
    root, batches = cifar10_root
    bad = dict(batches["data_batch_3"], labels=[1, 2])  # 1 image, 2 labels
    f = root/"cifar-10-batches-py"/"data_batch_3"
    f.write_bytes(Py2Pickle.dumps(bad))
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", "train", root=root)


CIFAR100_FINE = [f"fine_{i:02d}" for i in range(100)]
CIFAR100_COARSE = [f"coarse_{i:02d}" for i in range(20)]


def test_cifar100_uses_fine_labels(tmp_path, tv_cifar):
    rng = np.random.default_rng(17)
    folder = tmp_path/"cifar-100-python"; folder.mkdir()
    written = {}
    for name, n in (("train", 4), ("test", 3)):
        fine = [int(v) for v in rng.choice(np.arange(20, 100), n, replace=False)]  # never equal to a coarse label
        obj = dict(filenames=[f"{name}_{j}.png" for j in range(n)], batch_label=f"{name}ing batch 1 of 1",
                   fine_labels=fine, coarse_labels=[f//5 for f in fine], data=rng.integers(0, 256, (n, 3072), dtype=np.uint8))
        (folder/name).write_bytes(Py2Pickle.dumps(obj)); written[name] = obj
    (folder/"meta").write_bytes(Py2Pickle.dumps(dict(fine_label_names=CIFAR100_FINE, coarse_label_names=CIFAR100_COARSE)))
    for split in ("train", "test"):
        d = load_dataset("cifar100", split, root=tmp_path)
        obj = written[split]
        assert torch.equal(d.x, torch.from_numpy(obj["data"].reshape(-1, 3, 32, 32)))
        assert d.y.tolist() == obj["fine_labels"] != obj["coarse_labels"]
        assert d.classes == tuple(CIFAR100_FINE) and d.num_classes == 100
        ref = tv_cifar.CIFAR100(str(tmp_path), train=split == "train", download=False)
        assert torch.equal(d.x, torch.from_numpy(ref.data).permute(0, 3, 1, 2)) and d.y.tolist() == ref.targets
        assert list(d.classes) == ref.classes


# ----------------------------------------------------------------------------------------------------------------
# 3. pickle security
# ----------------------------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker: Path): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch '{self.marker}'",))


def test_dangerous_pickle_is_refused_without_running(cifar10_root, tmp_path):
    root, batches = cifar10_root
    # control: this pickle really runs a command when loaded with plain pickle
    control = tmp_path/"control_marker"
    pickle.loads(pickle.dumps(_Evil(control), protocol=2))
    assert control.exists()
    marker = tmp_path/"pwned_marker"
    evil = dict(batches["data_batch_1"], data=_Evil(marker))
    (root/"cifar-10-batches-py"/"data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system is not allowed"):
        load_dataset("cifar10", "train", root=root)
    with pytest.raises(pickle.UnpicklingError):
        load_pickle(root/"cifar-10-batches-py"/"data_batch_1")
    assert not marker.exists()


def test_dangerous_py2_global_is_refused(tmp_path):
    "A py2-style stream calling __builtin__.eval (what an attacker would write into a CIFAR file)."
    marker = tmp_path/"eval_marker"
    code = f"open({str(marker)!r}, 'w').close()"
    blob = (b"\x80\x02}q\x01(U\x04dataq\x02c__builtin__\neval\nq\x03U" + bytes([len(code)]) + code.encode()
            + b"q\x04\x85q\x05Rq\x06u.")
    pickletools.dis(blob, out=io.StringIO())
    pickle.loads(blob, encoding="latin1")  # control: plain pickle runs it
    assert marker.exists(); marker.unlink()
    p = tmp_path/"data_batch_1"; p.write_bytes(blob)
    with pytest.raises(pickle.UnpicklingError, match="eval is not allowed"):
        load_pickle(p)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# 4. Tiny-ImageNet
# ----------------------------------------------------------------------------------------------------------------

TINY_WNIDS = ["n03000000", "n01000000", "n02000000"]  # wnids.txt order (unsorted on purpose)
TINY_WORDS = {"n01000000": "goldfish, Carassius auratus", "n02000000": "European fire salamander",
              "n03000000": "bullfrog, Rana catesbeiana", "n09999999": "not in this subset"}
TINY_VAL = [("val_0.JPEG", "n02000000"), ("val_1.JPEG", "n03000000"), ("val_2.JPEG", "n01000000"),
            ("val_3.JPEG", "n01000000"), ("val_4.JPEG", "n02000000")]
TINY_VAL_ORDER = [3, 0, 4, 1, 2]  # line order in val_annotations.txt


def _random_image(rng, size=64, gray=False) -> Image.Image:
    "Blocky random content (8×8 blocks) with a little noise."
    c = 1 if gray else 3
    base = rng.integers(0, 256, (size//8, size//8, c)).repeat(8, 0).repeat(8, 1)
    a = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a[..., 0], "L") if gray else Image.fromarray(a, "RGB")


def make_tiny_imagenet(root: Path, seed: int = 18) -> Path:
    rng = np.random.default_rng(seed)
    t = root/"tiny-imagenet-200"
    t.mkdir(parents=True)
    (t/"wnids.txt").write_text("".join(w + "\n" for w in TINY_WNIDS))
    (t/"words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in TINY_WORDS.items()))
    for w in TINY_WNIDS:
        d = t/"train"/w/"images"; d.mkdir(parents=True)
        n = 3 if w == "n02000000" else 2
        boxes = []
        for i in range(n):
            gray = w == "n02000000" and i == 2  # one grayscale JPEG
            _random_image(rng, gray=gray).save(d/f"{w}_{i}.JPEG", quality=95)
            boxes.append(f"{w}_{i}.JPEG\t{i}\t{i + 1}\t{50 + i}\t{60 - i}\n")
        (t/"train"/w/f"{w}_boxes.txt").write_text("".join(boxes))
    (t/"val"/"images").mkdir(parents=True)
    for f, _ in TINY_VAL: _random_image(rng).save(t/"val"/"images"/f, quality=95)
    (t/"val"/"val_annotations.txt").write_text(
        "".join(f"{TINY_VAL[i][0]}\t{TINY_VAL[i][1]}\t{i}\t{2*i}\t{40 + i}\t{50 + i}\n" for i in TINY_VAL_ORDER))
    (t/"test"/"images").mkdir(parents=True)
    _random_image(rng).save(t/"test"/"images"/"test_0.JPEG", quality=95)
    return t


def pil_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def jpeg_diff(x: torch.Tensor, paths: list[Path]) -> tuple[int, float]:
    ref = torch.stack([pil_rgb(p) for p in paths])
    diff = (x.int() - ref.int()).abs()
    return int(diff.max()), float(diff.float().mean())


# Measured on this machine (torchvision 0.29.1 decode_image, which the library uses, vs Pillow 13.0.0's decode of
# the same quality-95 JPEGs, RGB and grayscale): max abs diff 0, mean abs diff 0.0000 on both the train and the
# val images (the decoders agree exactly here); the bounds leave room for other libjpeg builds.
JPEG_MAX_DIFF, JPEG_MEAN_DIFF = 3, 0.5


def test_tiny_imagenet_train_and_test(tmp_path, cache_root, monkeypatch):
    t = make_tiny_imagenet(tmp_path)
    sorted_wnids = sorted(TINY_WNIDS)
    train = load_dataset("tiny-imagenet", "train", root=tmp_path)
    assert train.source == str(t.resolve())
    assert train.x.dtype == torch.uint8 and tuple(train.x.shape) == (7, 3, 64, 64)
    assert train.classes == tuple(TINY_WORDS[w] for w in sorted_wnids)
    # files in order: sorted wnids, then sorted file names; label = index of the wnid in sorted order
    paths = [p for w in sorted_wnids for p in sorted((t/"train"/w/"images").iterdir())]
    assert train.y.tolist() == [sorted_wnids.index(p.name.split("_")[0]) for p in paths] == [0, 0, 1, 1, 1, 2, 2]
    mx, mean = jpeg_diff(train.x, paths)
    print(f"tiny-imagenet train JPEG decode vs PIL: max abs diff {mx}, mean abs diff {mean:.4f}")
    assert mx <= JPEG_MAX_DIFF and mean < JPEG_MEAN_DIFF
    # the grayscale JPEG becomes 3 equal channels
    g = [i for i, p in enumerate(paths) if p.name == "n02000000_2.JPEG"][0]
    with Image.open(paths[g]) as im: assert im.mode == "L"
    assert torch.equal(train.x[g, 0], train.x[g, 1]) and torch.equal(train.x[g, 0], train.x[g, 2])

    test = load_dataset("tiny-imagenet", "test", root=tmp_path)
    assert tuple(test.x.shape) == (5, 3, 64, 64)
    vpaths = [t/"val"/"images"/TINY_VAL[i][0] for i in TINY_VAL_ORDER]
    assert test.y.tolist() == [sorted_wnids.index(TINY_VAL[i][1]) for i in TINY_VAL_ORDER] == [0, 1, 1, 2, 0]
    mx2, mean2 = jpeg_diff(test.x, vpaths)
    print(f"tiny-imagenet val JPEG decode vs PIL: max abs diff {mx2}, mean abs diff {mean2:.4f}")
    assert mx2 <= JPEG_MAX_DIFF and mean2 < JPEG_MEAN_DIFF
    assert test.classes == train.classes

    # cached: one .pt per split under $PAPER_REPRO_DATA/.cache, and the next loads decode nothing
    cached = sorted(p.name for p in (cache_root/".cache").iterdir())
    assert len(cached) == 2 and all(n.endswith(".pt") for n in cached)
    assert any(n.startswith("tiny-imagenet-train-64px-") for n in cached)
    assert any(n.startswith("tiny-imagenet-test-64px-") for n in cached)
    forbid_decoding(monkeypatch)
    for first in (train, test):
        again = load_dataset("tiny-imagenet", first.split, root=tmp_path)
        assert torch.equal(again.x, first.x) and torch.equal(again.y, first.y) and again.classes == first.classes


def test_tiny_imagenet_without_words_uses_wnids(tmp_path, cache_root):
    t = make_tiny_imagenet(tmp_path, seed=19)
    (t/"words.txt").unlink()
    d = load_dataset("tiny-imagenet", "test", root=tmp_path)
    assert d.classes == tuple(sorted(TINY_WNIDS))


def test_tiny_imagenet_unknown_wnid_in_annotations(tmp_path, cache_root):
    t = make_tiny_imagenet(tmp_path, seed=20)
    ann = t/"val"/"val_annotations.txt"
    lines = ann.read_text().splitlines()
    lines[2] = "val_4.JPEG\tn04444444\t0\t0\t10\t10"
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        load_dataset("tiny-imagenet", "test", root=tmp_path)
    msg = str(e.value)
    assert "line 3" in msg and "n04444444" in msg and "val_annotations.txt" in msg
    assert not (cache_root/".cache").exists() or not any((cache_root/".cache").iterdir())


def test_tiny_imagenet_missing_val_image(tmp_path, cache_root):
    t = make_tiny_imagenet(tmp_path, seed=21)
    (t/"val"/"images"/"val_1.JPEG").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("tiny-imagenet", "test", root=tmp_path)
    assert "val_1.JPEG" in str(e.value) and "line 4" in str(e.value)


# ----------------------------------------------------------------------------------------------------------------
# 5. Caltech-101
# ----------------------------------------------------------------------------------------------------------------

CALTECH = {  # class -> list of (width, height, colour or grey level)
    "airplanes": [(300, 200, (200, 30, 30)), (150, 180, (200, 30, 30)), (90, 120, (200, 30, 30)),
                  (300, 200, (200, 30, 30)), (64, 64, (200, 30, 30)), (120, 90, (200, 30, 30)), (100, 100, (200, 30, 30))],
    "accordion": [(150, 180, (30, 160, 40)), (300, 200, (30, 160, 40)), (200, 200, 128), (80, 60, (30, 160, 40)),
                  (60, 80, (30, 160, 40))],
    "Faces_easy": [(120, 160, (20, 40, 220)), (160, 120, (20, 40, 220)), (300, 200, (20, 40, 220))],
}


def make_caltech(root: Path) -> tuple[Path, list[tuple[int, tuple[int, int, int]]]]:
    "Returns the folder and, in on-disk order (sorted classes, sorted files), (label, expected RGB) per image."
    folder = root/"caltech101"/"101_ObjectCategories"
    classes = sorted(CALTECH)
    expected = []
    for c in classes:
        d = folder/c; d.mkdir(parents=True)
        for i, (w, h, colour) in enumerate(CALTECH[c], 1):
            im = Image.new("L", (w, h), colour) if isinstance(colour, int) else Image.new("RGB", (w, h), colour)
            im.save(d/f"image_{i:04d}.jpg", quality=95)
            expected.append((classes.index(c), (colour,)*3 if isinstance(colour, int) else colour))
    bg = folder/"BACKGROUND_Google"; bg.mkdir()
    for i in range(2): Image.new("RGB", (100, 80), (255, 255, 0)).save(bg/f"image_{i + 1:04d}.jpg", quality=95)
    (folder/"readme.txt").write_text("not a class")  # plain files are ignored
    return folder, expected


def test_caltech101_split_and_content(tmp_path, cache_root, monkeypatch):
    folder, expected = make_caltech(tmp_path)
    total = len(expected)
    train = load_dataset("caltech101", "train", root=tmp_path, image_size=32)
    assert train.source == str(folder.resolve())
    assert train.classes == ("Faces_easy", "accordion", "airplanes")  # sorted, BACKGROUND_Google excluded
    cached = list((cache_root/".cache").iterdir())
    assert [p.name.startswith("caltech101-all-32px-") and p.suffix == ".pt" for p in cached] == [True]
    forbid_decoding(monkeypatch)  # the test split comes from the same cached decode
    test = load_dataset("caltech101", "test", root=tmp_path, image_size=32)
    for d in (train, test):
        assert d.x.dtype == torch.uint8 and tuple(d.x.shape[1:]) == (3, 32, 32)
        assert d.classes == train.classes
    assert len(train) + len(test) == total == 15
    assert len(test) == round(0.2*total) == 3
    assert test.class_counts().tolist() == [1, 1, 1]  # stratified: 3 held out from classes of 3, 5 and 7
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(total))
    # each image is where `indices` says, with its label and its (solid) colour
    for d in (train, test):
        for k, pos in enumerate(d.indices.tolist()):
            label, colour = expected[pos]
            assert d.y[k].item() == label
            diff = (d.x[k].int() - torch.tensor(colour).view(3, 1, 1)).abs()
            assert diff.max().item() <= JPEG_MAX_DIFF, (pos, colour, d.x[k].float().mean((1, 2)))
    # the split is fixed: a second load gives the same positions
    again = load_dataset("caltech101", "test", root=tmp_path, image_size=32)
    assert torch.equal(again.indices, test.indices) and torch.equal(again.x, test.x)


def test_caltech101_top_level_layout(tmp_path, cache_root):
    src, _ = make_caltech(tmp_path/"a")
    src.rename(tmp_path/"101_ObjectCategories")
    d = load_dataset("caltech101", "test", root=tmp_path, image_size=32)
    assert d.source == str((tmp_path/"101_ObjectCategories").resolve()) and len(d) == 3


# ----------------------------------------------------------------------------------------------------------------
# 6. ImageNet class folders
# ----------------------------------------------------------------------------------------------------------------

IMAGENET = {"n01443537": (10, 200, 10), "n01440764": (220, 220, 20)}  # wnid -> colour (unsorted on purpose)


def make_imagenet(root: Path) -> Path:
    folder = root/"imagenet"
    for split, n in (("train", 3), ("val", 2)):
        for j, (w, colour) in enumerate(IMAGENET.items()):
            d = folder/split/w; d.mkdir(parents=True)
            for i in range(n - j if split == "train" else n):
                Image.new("RGB", (40 + 10*i, 30 + 5*i), colour).save(d/f"{w}_{i}.JPEG", quality=95)
    return folder


def test_imagenet_folders(tmp_path, cache_root, monkeypatch):
    folder = make_imagenet(tmp_path)
    wnids = sorted(IMAGENET)
    train = load_dataset("imagenet", "train", root=tmp_path, image_size=16)
    test = load_dataset("imagenet", "test", root=tmp_path, image_size=16)
    assert train.source == test.source == str(folder.resolve())
    assert tuple(train.x.shape) == (5, 3, 16, 16) and tuple(test.x.shape) == (4, 3, 16, 16)
    assert train.classes == test.classes == tuple(wnids)
    assert train.y.tolist() == [0, 0, 1, 1, 1]  # sorted wnids: n01440764 has 2 train images, n01443537 has 3
    assert test.y.tolist() == [0, 0, 1, 1]
    for d in (train, test):
        for k in range(len(d)):
            colour = torch.tensor(IMAGENET[wnids[d.y[k]]]).view(3, 1, 1)
            assert (d.x[k].int() - colour).abs().max().item() <= JPEG_MAX_DIFF
    assert len(list((cache_root/".cache").glob("imagenet-*-16px-*.pt"))) == 2
    forbid_decoding(monkeypatch)
    again = load_dataset("imagenet", "train", root=tmp_path, image_size=16)
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


def test_imagenet_needs_image_size(tmp_path, cache_root):
    make_imagenet(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagenet", "train", root=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# 7. missing data
# ----------------------------------------------------------------------------------------------------------------

def test_missing_cifar10_lists_searched_folders(tmp_path):
    empty = tmp_path/"empty"; empty.mkdir()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("cifar10", root=empty)
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    base = empty.resolve()
    searched = [base/"cifar-10-batches-py", base/"cifar10"/"cifar-10-batches-py", base/"cifar10"]
    lines = msg.splitlines()
    for p in searched: assert f"  {p}" in lines
    assert [lines.index(f"  {p}") for p in searched] == sorted(lines.index(f"  {p}") for p in searched)
    assert "to get it:" in msg and "download=True" in msg and "cifar-10-python.tar.gz" in msg
    assert "data_batch_1" in msg and "batches.meta" in msg  # what it looked for
    assert not any(empty.iterdir())  # nothing was created or downloaded


def test_incomplete_cifar10_folder_is_not_found(tmp_path):
    "A folder missing one of the files does not count as holding the dataset."
    batches = make_cifar10_batches(seed=22)
    folder = tmp_path/"cifar-10-batches-py"
    write_cifar10(folder, batches)
    (folder/"test_batch").unlink()
    assert find_dataset("cifar10", root=tmp_path) is None
    with pytest.raises(DataNotFoundError, match="not found"):
        ensure_dataset("cifar10", root=tmp_path)
