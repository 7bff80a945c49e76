"""[reliability] of training (issue #24): a diverged run stops with `Diverged` at the end of the epoch it diverged in
(naming epoch, step, iteration, lr and optimizer) or, with diverged="record", ends its history with a 'diverged'
row; its checkpoint stays the last good epoch's; IMP on a diverged run and `imp_prune` on NaN weights say so; a
network that does not fit the data (input shape, classes), bad callbacks and a checkpoint in a missing folder are
refused before the first step; a checkpoint write on a full disk removes its .tmp, keeps the last good checkpoint,
says "no space left", and the rerun resumes from it. Every test trains a LeNet on tiny synthetic data."""
import copy
import math
import shutil
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

import paper_repro.imp as imp_module
from paper_repro.data import DataSplit
from paper_repro.masks import Mask
from paper_repro.models import get_model, same_state
from paper_repro.recipes import Recipe
from paper_repro.train import Callback, Diverged, fit
from paper_repro.train import _check_example   # the pre-training forward pass: checked to leave the run unchanged

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH = 64, 16
PER = N // BATCH                                   # steps an epoch
SGD = Recipe(optimizer="sgd", lr=0.05, epochs=3, batch_size=BATCH, schedule="constant")


def tiny(n=N, classes=4, size=8, seed=0, test=True) -> dict:
    "Random 1×size×size uint8 images with `classes` labels: a train split of n (and a test split of n/2)."
    g = torch.Generator().manual_seed(seed)
    def split(name, m):
        return DataSplit(x=torch.randint(0, 256, (m, 1, size, size), generator=g, dtype=torch.uint8),
                         y=torch.randint(0, classes, (m,), generator=g), name="tiny", split=name,
                         classes=tuple(str(i) for i in range(classes)), mean=(0.5,), std=(0.25,), source="test",
                         indices=torch.arange(m))
    return {"train": split("train", n), **({"test": split("test", n // 2)} if test else {})}


def net(classes=4, size=8, seed=0):
    return get_model("lenet-300-100", in_channels=1, input_size=size, num_classes=classes, seed=seed)


def train(model=None, data=None, recipe=SGD, **kw):
    return fit(model if model is not None else net(), data or tiny(), recipe, device="cpu", progress=False, **kw)


class NaNAt(Callback):
    "Set one weight to NaN after global iteration `k` (on_step), or after epoch `epoch`'s steps (on_epoch_trained); count steps."
    def __init__(self, k=None, epoch=None): self.k, self.epoch, self.steps = k, epoch, 0
    def _poison(self, s):
        with torch.no_grad(): s.model.hidden[0].weight[0, 0] = math.nan
    def on_step(self, s):
        self.steps += 1
        if s.iteration == self.k: self._poison(s)
    def on_epoch_trained(self, s):
        if s.epoch == self.epoch: self._poison(s)


# ------------------------------------------------------------------------------------------------------- divergence
def test_lr_1e6_raises_diverged_naming_epoch_step_lr_and_optimizer():
    with pytest.raises(Diverged) as e:
        train(recipe=SGD.replace(lr=1e6))
    msg = str(e.value)
    assert isinstance(e.value, FloatingPointError)
    assert "training diverged: the loss is" in msg and "at epoch 1, step" in msg and f"of {PER} (iteration" in msg
    assert "lr=1e+06 (sgd)" in msg and "lower the learning rate" in msg and "diverged='record'" in msg
    assert e.value.epoch == 1 and 1 <= e.value.step <= PER and e.value.iteration == e.value.step and e.value.lr == 1e6


def test_record_returns_the_good_epochs_and_a_diverged_row():
    k = PER + 2                                                   # a NaN weight after step 2 of epoch 2
    h = train(callbacks=[NaNAt(k)], diverged="record")
    good = train()
    pd.testing.assert_frame_equal(h.iloc[:-1].drop(columns="time"), good.query("epoch == 1").drop(columns="time"))
    last = h.iloc[-1]
    assert (last.epoch, last.split, last.metric, last.value, last.lr) == (2, "train", "diverged", k + 1, SGD.lr)
    assert h.value.map(math.isfinite).all()                       # no NaN reaches the history
    assert last.density == 1.0                                    # a dense network with a NaN weight is still dense


def test_record_of_a_masked_run_keeps_its_mask_density():
    m = net(); mask = Mask({n: torch.rand(t.shape, generator=torch.Generator().manual_seed(0)) < 0.3 for n, t in Mask.ones(m).items()})
    h = train(m, callbacks=[NaNAt(PER + 2)], mask=mask, diverged="record")
    assert h.iloc[-1].metric == "diverged" and h.iloc[-1].density == pytest.approx(mask.density)


def test_lr_sweep_with_record_marks_only_the_diverged_rate():
    runs = {lr: train(recipe=SGD.replace(lr=lr, epochs=1), diverged="record") for lr in (0.05, 1e6)}
    assert [(h.metric == "diverged").any() for h in runs.values()] == [False, True]


def test_a_nan_weight_after_step_k_is_reported_at_step_k_plus_1_and_the_epoch_is_the_last():
    k = PER + 1                                                   # after step 1 of epoch 2
    cb = NaNAt(k)
    with pytest.raises(Diverged, match=rf"the loss is nan at epoch 2, step 2 of {PER} \(iteration {k + 1}\), lr=0.05 \(sgd\)") as e:
        train(callbacks=[cb])
    assert (e.value.epoch, e.value.step, e.value.iteration) == (2, 2, k + 1)
    assert cb.steps == 2 * PER                                    # epoch 2 ends; epoch 3 never starts


def test_a_nan_weight_after_an_epochs_last_step_is_caught_before_the_next_epoch():
    cb = NaNAt(k=PER)                                             # the last step of epoch 1: its loss was still finite
    with pytest.raises(Diverged, match=rf"'hidden.0.weight' is not finite after epoch 1, step {PER} of {PER}"):
        train(data=tiny(test=False), callbacks=[cb])              # no test split to evaluate: the weights are checked
    assert cb.steps == PER


def test_a_non_finite_test_loss_stops_the_run():
    cb = NaNAt(epoch=2)                                           # after epoch 2's steps, before its evaluation
    with pytest.raises(Diverged, match=rf"the test loss is nan after epoch 2, step {PER} of {PER} \(iteration {2 * PER}\)"):
        train(callbacks=[cb])
    assert cb.steps == 2 * PER


def test_a_nan_extra_loss_term_is_reported_at_its_step():
    def bad_term(model): return torch.tensor(math.nan)
    with pytest.raises(Diverged, match=r"the loss \(with bad_term\) is nan at epoch 1, step 1 of"):
        train(extra_loss=bad_term)


def test_the_checkpoint_stays_the_last_good_epoch_and_a_rerun_resumes_from_it(tmp_path):
    ck, k = tmp_path/"ck.pt", 2 * PER + 1                         # diverges in epoch 3
    with pytest.raises(Diverged, match="at epoch 3, step 2"):
        train(callbacks=[NaNAt(k)], checkpoint=ck)
    saved = torch.load(ck, weights_only=True)
    assert saved["epoch"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    resumed, fresh = net(), net()
    h = train(resumed, checkpoint=ck)                             # the fault gone: resumes after epoch 2
    pd.testing.assert_frame_equal(h.drop(columns="time"), train(fresh).drop(columns="time"))
    assert same_state(resumed, fresh)


def test_diverged_must_be_raise_or_record():
    with pytest.raises(ValueError, match=r"diverged='warn': use one of \('raise', 'record'\)"):
        train(diverged="warn")


def test_imp_on_a_diverged_run_raises_diverged_not_an_assertion():
    arch = dict(name="lenet-300-100", in_channels=1, input_size=8, num_classes=4, seed=0)
    with pytest.raises(Diverged, match=r"lr=1e\+06"):
        imp_module.imp(arch, tiny(), 0.5, SGD.replace(lr=1e6, epochs=1), cache=False, progress=False)


def test_imp_prune_refuses_non_finite_weights_by_name():
    model = net()
    mask = Mask.ones(model)
    with torch.no_grad(): model.hidden[1].weight[3, 4] = math.inf
    with pytest.raises(ValueError, match=r"imp_prune's weights.*\['hidden.1.weight'\] has 1 non-finite"):
        imp_module.imp_prune(mask, model, 0.5)


def test_imp_prune_says_which_count_it_expected_and_got(monkeypatch):
    model = net()
    mask = Mask.ones(model)
    monkeypatch.setattr(imp_module, "magnitude", lambda m, w, **kw: m)       # a pruning that prunes nothing
    nxt = imp_module.imp_counts(mask.size, 0.5)[1]
    with pytest.raises(RuntimeError, match=rf"kept {mask.size} of {mask.size} weights.*asks for {nxt} after {mask.size}"):
        imp_module.imp_prune(mask, model, 0.5)


# ------------------------------------------------------------------------------------------- checks before training
class Steps(Callback):
    def __init__(self): self.steps = 0
    def on_step(self, s): self.steps += 1


def test_an_input_shape_mismatch_is_named_before_training():
    cb = Steps()
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\) \('tiny' train\).*first layer is hidden.0 = Linear\(in_features=784.*input_size"):
        train(net(size=28), callbacks=[cb])
    assert cb.steps == 0


def test_too_few_outputs_for_the_labels_are_named_before_training():
    with pytest.raises(ValueError, match=r"2 outputs \(its last layer is fc = Linear.*4 classes.*num_classes=4"):
        train(net(classes=2), tiny(classes=4))


def test_a_label_beyond_the_class_names_counts_too():
    data = tiny(classes=4)
    data["test"].y[0] = 6                                          # labels 0..6 under 4 class names
    with pytest.raises(ValueError, match=r"7 classes.*num_classes=7"):
        train(net(classes=4), data)


def test_the_example_check_leaves_the_run_unchanged():
    "One forward pass in eval mode under no_grad: BatchNorm statistics, random state and training mode stay as they were."
    model = get_model("resnet20", in_channels=1, input_size=8, num_classes=4, width=0.25, seed=0).train()
    before, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    _check_example(model, tiny(), torch.device("cpu"))
    assert same_state(model.state_dict(), before) and torch.equal(torch.get_rng_state(), rng) and model.training


def test_a_checkpoint_in_a_missing_folder_is_refused_before_training(tmp_path):
    ck = tmp_path/"nosuch"/"ck.pt"
    with pytest.raises(FileNotFoundError, match=r"nosuch'.*does not exist"):
        train(checkpoint=ck)
    assert not (tmp_path/"nosuch").exists()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        train(checkpoint=tmp_path)


@pytest.mark.parametrize("callbacks, words", [([5], "callbacks[0]=5"), ([print, "x"], "callbacks[1]='x'"),
                                              ([Steps], "callbacks[0]=<class"), (Steps(), "callbacks=<")])
def test_a_bad_callback_is_a_type_error_naming_it(callbacks, words):
    with pytest.raises(TypeError) as e:
        train(callbacks=callbacks)
    assert words in str(e.value) and "Callback" in str(e.value)


def test_a_non_callable_extra_loss_keeps_its_message():
    with pytest.raises(ValueError, match="extra_loss=3"):
        train(extra_loss=3)


# ----------------------------------------------------------------------------------------------- a full disk
def test_a_full_disk_keeps_the_last_good_checkpoint_and_the_rerun_resumes(tmp_path):
    ck, real = tmp_path/"checkpoint.pt", torch.save
    def full_at_epoch_2(obj, f, *a, **k):              # epoch 1's checkpoint is written; epoch 2's fills the disk
        if obj["epoch"] < 2: return real(obj, f, *a, **k)
        Path(f).write_bytes(b"part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    with mock.patch("torch.save", full_at_epoch_2), \
         mock.patch("shutil.disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 0)):
        with pytest.raises(OSError, match=r"no space left writing checkpoint.pt.tmp of run checkpoint .*checkpoint.pt") as e:
            train(checkpoint=ck)
    assert "partial file was removed" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]     # no .tmp left behind
    assert torch.load(ck, weights_only=True)["epoch"] == 1                       # the last good one
    resumed, fresh = net(), net()
    pd.testing.assert_frame_equal(train(resumed, checkpoint=ck).drop(columns="time"), train(fresh).drop(columns="time"))
    assert same_state(resumed, fresh)
