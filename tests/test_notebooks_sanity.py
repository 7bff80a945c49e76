"""Sanity Checks for Lottery Tickets notebooks under papermill: sanity_figA1 (`FIRST`) computes the grid once; the
other figures share its run cache, as they do in `make repro`."""
import pandas as pd
import papermill as pm
import pytest


pytestmark = pytest.mark.heavy
FIRST = "sanity_figA1"   # computes the runs; the `paper` fixture (conftest) runs it once for this module


def test_sanity_figures_share_one_grid(paper):
    """sanity_figA1 computes LT/RR × IMP/OMP at every level; sanity_figD adds only WR and SD (at the focus densities);
    sanity_figF and sanity_figG then train nothing. The figures, claims (with their kind and source) and Jackpot tables
    (Appendix C with the paper's test and the per-rate one) are written, and the numbers the notebooks share are the
    same runs."""
    nbs, first = paper
    assert first["runs_computed"] > 20
    d = nbs.run("sanity_figD", preset="smoke", rewind_epoch=1)
    assert d["runs_loaded"] > 0 and d["runs_computed"] == 3*2*3           # lrs × focus densities × (WR-IMP, WR-OMP, SD)
    for nb in ("sanity_figF", "sanity_figG"):
        p = nbs.run(nb, preset="smoke")
        assert p["runs_computed"] == 0 and p["runs_loaded"] > 0, (nb, p)
    for nb in ("sanity_figA1", "sanity_figD", "sanity_figF", "sanity_figG"):
        out = nbs.out(nb)
        assert (out / f"{nb}.png").stat().st_size > 1000 and (out / f"{nb}.pdf").read_bytes()[:5] == b"%PDF-"
        nbs.claims(nb)
    d = pd.read_csv(nbs.out("sanity_figD") / "claims.csv")
    assert set(d.kind[d.claim.str.startswith("① ")]) == {"regime"} and set(d.kind[d.claim.str.contains("①–⑤")]) == {"paper"}
    assert d.source[d.kind == "paper"].str.contains("App. B").all()                # each paper row quotes Appendix B (and D)
    f = pd.read_csv(nbs.out("sanity_figF") / "claims.csv")
    jp = f[f.kind == "paper"]                       # F.2: ResNet-20 on CIFAR-10 holds no Jackpot ticket; LeNet-300-100 stands in
    assert len(jp) == 1 and jp.claim.iloc[0].startswith("ResNet-20 on CIFAR-10 (here lenet-300-100") and "no Jackpot" in jp.claim.iloc[0]
    assert "F.2" in jp.source.iloc[0] and "'paper' test" in jp.condition.iloc[0]
    jack = pd.read_csv(nbs.out("sanity_figF") / "jackpot.csv")
    c = jack.query("appendix == 'C'")
    assert set(c.lr) == {0.005, 0.01, 0.1} and set(c["mode"]) == {"paper", "per-lr"}
    assert set(jack.condition) >= {"A_LT ≈ A_PRE", "A_LT > A_SD", "A_LT > A_RR", "all three at this lr", "Jackpot (∃ lr: all three)",
                                   "⑤ ∃ lr: ≈ well-trained dense"}
    pre = c[(c["mode"] == "paper") & (c.condition == "A_LT ≈ A_PRE")]
    assert pre.compared_with.str.startswith("dense (best lr ").all() and pre.reference.nunique() == 1    # A_PRE: the best rate's
    paper, per = (c[(c["mode"] == m) & (c.condition == "Jackpot (∃ lr: all three)")].set_index(["ticket", "density"]).holds
                  for m in ("paper", "per-lr"))
    assert not ((paper == True) & (per != True)).any()                               # the paper's test implies the per-rate one
    a1 = pd.read_parquet(nbs.out("sanity_figA1") / "results.parquet").set_index(["lr", "variant", "level"]).acc
    f = pd.read_parquet(nbs.out("sanity_figF") / "results.parquet").set_index(["lr", "variant", "level"]).acc
    common = f.index.intersection(a1.index)
    assert len(common) >= 3*(1 + 4*2)
    pd.testing.assert_series_equal(f.loc[common], a1.loc[common])
    corr = pd.read_parquet(nbs.out("sanity_figG") / "results.parquet")
    assert set(corr.variant) == {"dense", "LT-IMP", "RR-IMP"} and corr.R_p.between(0, 1).all()


def test_sanity_figG_checks_its_density(paper):
    "A focus density the grid lacks is refused, naming it (the grid's runs are loaded from sanity_figA1's cache first)."
    nbs, _ = paper
    with pytest.raises(pm.PapermillExecutionError, match="density=0.3"):
        nbs.run("sanity_figG", preset="smoke", density=0.3)


def test_run_hashes_are_pinned(paper):
    "The run cache keys FIRST makes at smoke are the pinned ones (conftest.check_pinned_runs)."
    from conftest import check_pinned_runs
    nbs, _ = paper
    check_pinned_runs(FIRST, nbs.first_runs)
