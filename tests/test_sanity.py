"""paper_repro.sanity: shuffling keeps every layer's count, reinitialisation keeps the mask and draws the same
distribution, score inversion takes the other end of each layer's ranking, the table, errors."""
import pytest
import torch

from paper_repro.masks import Mask, random_mask
from paper_repro.models import get_model
from paper_repro.sanity import CHECKS, invert_check, reinit_check, sanity_check, sanity_table, shuffle_check
from paper_repro.train import Ticket, get_recipe, model_for

SPEC = model_for("digits", "lenet-300-100", seed=0, init="signed_constant", bias=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def ticket(density=0.1, seed=0, key="t"):
    net = get_model(**SPEC)
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(w.shape, generator=g) for n, w in net.named_parameters() if n.endswith("weight")}
    return Ticket(random_mask(net, density, seed=seed), net.state_dict(), SPEC, key=key, extras=dict(scores=scores))


@pytest.mark.parametrize("density", [0.5, 0.1, 0.014, 0.005])
@pytest.mark.parametrize("seed", [0, 1])
def test_shuffle_keeps_every_layer_count_and_moves_positions(density, seed):
    t = ticket(density)
    s = shuffle_check(t, seed)
    for n in t.mask:
        assert int(s.mask[n].sum()) == int(t.mask[n].sum()), n
    assert s.mask != t.mask and s.weights is t.weights and s.key == f"t/shuffle-{seed}"
    assert shuffle_check(t, seed).mask == s.mask                      # seeded


@pytest.mark.parametrize("init", [None, "kaiming_normal"])
def test_reinit_keeps_the_mask_and_redraws_the_weights(init):
    t = ticket()
    r = reinit_check(t, seed=5, init=init)
    assert r.mask == t.mask and r.model["seed"] == 5
    for n, w in r.weights.items():
        if not n.endswith("weight"): continue
        assert not torch.equal(w, t.weights[n]), n
        if init is None:                                                # the original distribution: ±σ with new signs
            assert torch.equal(w.abs(), t.weights[n].abs()), n
            assert 0.4 < (w > 0).float().mean() < 0.6
        else:
            fan_in = w.shape[1]
            assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    net = r.network()
    assert Mask.from_weights(net) == r.mask                             # built under the same mask


@pytest.mark.parametrize("density", [0.3, 0.05, 0.01])
def test_invert_takes_the_complementary_ranking(density):
    """Same count per layer; every kept inverted score is below every score the ticket's own top-k ranking keeps."""
    t = ticket(density)
    s = t.extras["scores"]
    top = {n: torch.zeros(v.numel(), dtype=torch.bool).index_fill_(0, torch.sort(v.flatten(), descending=True).indices[:int(t.mask[n].sum())], True).view_as(v)
           for n, v in s.items()}
    inv = invert_check(t)
    for n, v in s.items():
        k = int(t.mask[n].sum())
        assert int(inv.mask[n].sum()) == k
        lowest = torch.sort(v.flatten()).values[:k]
        assert torch.equal(torch.sort(v[inv.mask[n]]).values, lowest), n          # exactly the k lowest
        if k: assert v[inv.mask[n]].max() < v[top[n]].min(), n                    # the other end of the ranking
        assert not (inv.mask[n] & top[n]).any() or 2 * k > v.numel(), n


def test_invert_with_absolute_scores_and_ties():
    t = ticket(0.1)
    signed = {n: v - 0.5 for n, v in t.extras["scores"].items()}
    inv = invert_check(t, scores=signed, absolute=True)
    for n, v in signed.items():
        kept = v.abs()[inv.mask[n]]
        assert kept.max() <= v.abs()[~inv.mask[n]].min(), n
    flat = {n: torch.zeros_like(v) for n, v in signed.items()}
    a, b = invert_check(t, scores=flat, seed=0), invert_check(t, scores=flat, seed=1)
    assert a.mask != b.mask                                              # ties: a seeded random choice
    assert a.mask.layer_density().kept.tolist() == t.mask.layer_density().kept.tolist()


def test_sanity_check_by_name_and_errors():
    t = ticket()
    assert set(CHECKS) == {"shuffle", "reinit", "invert"}
    assert sanity_check(t, "reinit", seed=0).model["seed"] == 1          # never the ticket's own seed
    with pytest.raises(ValueError, match="check='flip'"):
        sanity_check(t, "flip")
    with pytest.raises(ValueError, match="seed=0"):
        reinit_check(t, seed=0)
    with pytest.raises(ValueError, match="needs the scores"):
        invert_check(Ticket(t.mask, t.weights, SPEC))


def test_sanity_table(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    t = ticket(0.2)
    tab = sanity_table(t, "digits", get_recipe("cpu", epochs=1, batch_size=128), progress=False).set_index("variant")
    assert sorted(tab.index) == ["invert", "reinit", "shuffle", "ticket"]
    assert (tab.density - t.mask.density).abs().max() < 1e-12
    assert tab.pre_finetune_acc.between(0, 1).all() and tab.post_finetune_acc.between(0, 1).all()
    no_scores = Ticket(t.mask, t.weights, SPEC, key="u")
    assert "invert" not in set(sanity_table(no_scores, "digits", "cpu", finetune_too=False).variant)
