"""Sanity Checks for Lottery Tickets notebooks under papermill: sanity_figA1 (`FIRST`) computes the grid once; the
other figures share its run cache, as they do in `make repro`."""
import pandas as pd
import papermill as pm
import pytest

pytestmark = pytest.mark.heavy
FIRST = "sanity_figA1"   # computes the runs; the `paper` fixture (conftest) runs it once for this module


def test_sanity_figures_share_one_grid(paper):
    """sanity_figA1 computes LT/RR × IMP/OMP at every level; sanity_figD adds only WR and SD (at the focus densities);
    sanity_figF and sanity_figG then train nothing. The figures, claims and Jackpot tables are written, and the
    numbers the notebooks share are the same runs."""
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
        claims = pd.read_csv(out / "claims.csv")
        assert {"claim", "measured", "condition", "holds"} <= set(claims.columns) and len(claims) >= 3, nb
    jack = pd.read_csv(nbs.out("sanity_figF") / "jackpot.csv")
    assert set(jack.query("appendix == 'C'").lr) == {0.005, 0.01, 0.1}
    assert set(jack.condition) >= {"A_LT ≈ A_PRE", "A_LT > A_SD", "A_LT > A_RR", "⑤ ∃ lr: ≈ well-trained dense"}
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
