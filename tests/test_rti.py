"""Maene et al.'s repulsion loss, repellent IMP through imp's round_loss hook, the reinitialisation control
(masks_from), the round statistics and the sweep's cache sharing."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from paper_repro.imp import imp
from paper_repro.masks import Mask
from paper_repro.models import same_state
from paper_repro.rti import (RTISpec, Optima, Repulsion, pruning_threshold, remaining_weights, repulsion_loss, round_statistics,
                             rti_sweep, setting)
from paper_repro.recipes import Recipe
from paper_repro.tickets import arch_for

pytestmark = pytest.mark.usefixtures("one_thread")


def _cos2(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))) ** 2


def test_repulsion_loss_equals_the_formula_by_hand():
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(4, 5, generator=g), torch.randn(7, generator=g)]
    mask = [(torch.rand(4, 5, generator=g) < 0.6).float(), (torch.rand(7, generator=g) < 0.6).float()]
    prev = [[torch.randn(4, 5, generator=g), torch.randn(7, generator=g)] for _ in range(3)]
    flat = lambda ts: np.concatenate([(t * m).numpy().ravel() for t, m in zip(ts, mask)])
    want = 2.0 / 3 * sum(_cos2(flat(params), flat(p)) for p in prev)
    assert repulsion_loss(params, mask, prev, 2.0).item() == pytest.approx(want, rel=1e-5)
    assert repulsion_loss(params, mask, prev, -1.0).item() == pytest.approx(-want / 2, rel=1e-5)
    assert repulsion_loss(params, mask, prev, 2.0, only_last=True).item() == pytest.approx(2.0 * _cos2(flat(params), flat(prev[-1])), rel=1e-5)
    store = Optima(mask)
    for p in prev: store.add(p)
    assert repulsion_loss(params, None, store, 2.0).item() == pytest.approx(want, rel=1e-5)
    no_mask = 2.0 / 3 * sum(_cos2(np.concatenate([t.numpy().ravel() for t in params]), np.concatenate([t.numpy().ravel() for t in p]))
                            for p in prev)
    assert repulsion_loss(params, None, prev, 2.0).item() == pytest.approx(no_mask, rel=1e-5)


@pytest.mark.parametrize("lam_r", [2.0, -1.0])
def test_gradient_steps_move_the_cosine_the_right_way(lam_r):
    g = torch.Generator().manual_seed(7)
    optimum = torch.randn(2000, generator=g)
    w = (optimum + torch.randn(2000, generator=g)).requires_grad_()
    before = _cos2(w.detach().numpy(), optimum.numpy())
    opt = torch.optim.SGD([w], lr=20.0)
    for _ in range(40):
        opt.zero_grad(); repulsion_loss([w], None, [[optimum]], lam_r).backward(); opt.step()
    after = _cos2(w.detach().numpy(), optimum.numpy())
    assert (after < before - 0.1) if lam_r > 0 else (after > before + 0.1), (before, after)


def test_store_memory_is_the_kept_entries():
    mask = [torch.rand(300, 784) < 0.2, torch.rand(100, 300) < 0.2]
    kept = sum(int(m.sum()) for m in mask)
    for half, width in ((False, 4), (True, 2)):
        store = Optima(mask, half=half)
        for _ in range(3): store.add([torch.randn(300, 784), torch.randn(100, 300)])
        assert store.kept == kept and store.bytes_per_optimum == width * kept
        assert sum(r.numel() * r.element_size() for r in store.rows) == 3 * width * kept


def test_bad_input_names_the_problem():
    p, m = [torch.ones(3)], [torch.ones(3)]
    with pytest.raises(ValueError, match="without stored optima"): repulsion_loss(p, m, [], 2.0)
    with pytest.raises(ValueError, match=r"optimum\[0\]: shape \(4,\)"): repulsion_loss(p, m, [[torch.ones(4)]], 2.0)
    with pytest.raises(ValueError, match=r"mask\[0\]: shape \(2,\)"): repulsion_loss(p, [torch.ones(2)], [[torch.ones(3)]], 2.0)
    with pytest.raises(ValueError, match="lam_r=0"): Repulsion(0.0)


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    arch = arch_for("digits", "lenet-300-100", seed=0)
    rc = Recipe(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, schedule="constant", epochs=3, batch_size=32)
    kw = dict(progress=False, root=root)
    plain = imp(arch, "digits", 0.8**3, rc, **kw)
    rep = imp(arch, "digits", 0.8**3, rc, round_loss=Repulsion(2.0), **kw)
    last = imp(arch, "digits", 0.8**3, rc, round_loss=Repulsion(2.0, only_last=True), **kw)
    rr = imp({**arch, "seed": 5}, "digits", 0.8**3, rc, masks_from=plain, **kw)
    return dict(plain=plain, rep=rep, last=last, rr=rr, arch=arch)


def test_repellent_imp_shares_round_zero_and_repels(chains):
    plain, rep = chains["plain"], chains["rep"]
    assert rep.rounds.cached.tolist() == [True, False, False] and same_state(rep.state(0), plain.state(0))
    hist = rep.history.query("split == 'train' and metric == 'repulsion'")
    assert set(hist["round"]) == {1, 2} and (hist.value > 0).all()
    flat = lambda ch, r, k: torch.cat([ch.state(k)[n][ch.mask(r)[n]] for n in ch.mask(r)]).numpy()
    for r in (1, 2):
        for k in range(r):
            assert _cos2(flat(rep, r, r), flat(rep, r, k)) < _cos2(flat(plain, r, r), flat(plain, r, k))


def test_only_last_differs_from_all_optima_after_round_one(chains):
    rep, last = chains["rep"], chains["last"]
    assert same_state(rep.state(1), last.state(1))          # round 1 has one earlier optimum either way (a separate run)
    assert not same_state(rep.state(2), last.state(2))


def test_reinit_control_trains_the_same_masks_from_another_init(chains):
    plain, rr = chains["plain"], chains["rr"]
    for r in range(3):
        assert rr.mask(r) == plain.mask(r)
        for n, m in rr.mask(r).items(): assert int(rr.state(r)[n][~m].abs().sum()) == 0
    assert rr.ticket.mask == plain.ticket.mask and not same_state(rr.init_state, plain.init_state)


def test_thresholds_are_where_imp_cut(chains):
    plain = chains["plain"]
    st = round_statistics(plain)
    for r in range(3):
        nxt = plain.mask(r + 1)
        kept = remaining_weights(plain.state(r), nxt).abs()
        assert float(kept.min()) >= st.threshold[r]
        dropped = torch.cat([plain.state(r)[n][plain.mask(r)[n] & ~nxt[n]].abs() for n in nxt])
        assert float(dropped.max()) == st.threshold[r]
        assert len(dropped) == math.floor(0.2 * plain.mask(r).nonzeros + 0.5)


def test_sweep_loads_on_the_second_call(tmp_path, monkeypatch):
    """One pass: a cold sweep computes every run and loads none of them back (no gather); the second call loads them
    all, computes nothing and gives the same table."""
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    cfg = RTISpec.fill("rti_fig1", "smoke", rounds=2)
    first = rti_sweep(cfg, [setting(256), setting(64)], progress=False)
    n = 2*2*2                                                  # settings × (IMP, reinit) × rounds
    assert first.cache == {"loaded": 0, "computed": n} and len(first.table) == n
    again = rti_sweep(cfg, [setting(256), setting(64)], progress=False)
    assert again.cache == {"loaded": n, "computed": 0}
    pd.testing.assert_frame_equal(again.table, first.table)
    assert first.table.label.tolist() == ["batch 256"]*4 + ["batch 64"]*4   # the settings' order, not the units' (by cost)
    assert sorted(first.chains) == sorted(again.chains) and list(first.recipes) == ["batch 256", "batch 64"]


def test_spec_types_and_normalises_the_knobs():
    cfg = RTISpec.fill("rti_fig1", "cpu", seeds=3, batch_sizes="[128, 2048]", warmup=2)
    assert (cfg.seeds, cfg.batch_sizes, cfg.warmup, cfg["rounds"]) == ([3], [128, 2048], 2.0, 16)
    assert RTISpec.fill("rti_fig2", "smoke").batch_sizes == [16, 512]          # None: the network's
    assert RTISpec.fill("rti_fig7", "paper").weight_decay == 0.0 and RTISpec.fill("rti_fig7", "cpu").weight_decay == 5e-4
    assert RTISpec.fill("rti_fig4", "smoke").lam_r == 0.0 and RTISpec.fill("rti_fig3", "smoke").lam_r == 2.0
    assert cfg.replace(seeds=[0, 1]).seeds == [0, 1] and cfg.seeds == [3]
    for bad, match in ((dict(model="conv4"), "model='conv4'"), (dict(rounds=0), "rounds=0"), (dict(seeds=[-2]), "seeds=\\[-2\\]"),
                       (dict(batch_sizes=[0]), "batch_size=0"), (dict(rounds=1.5), "rounds=1.5"), (dict(paths=[1]), "paths")):
        with pytest.raises(ValueError, match=match):
            RTISpec.fill("rti_fig1", "cpu", **bad)
