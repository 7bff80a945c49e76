"""ASNI notebooks under papermill: asni_table2 (`FIRST`) computes D, A, C and S once; the figures share its run cache,
as they do in `make repro`."""
import pandas as pd
import pytest


pytestmark = pytest.mark.heavy
FIRST = "asni_table2"   # computes the runs; the `paper` fixture (conftest) runs it once for this module


def test_asni_notebooks_share_the_table_runs(paper):
    """asni_table2 computes D, A, C and S (4 runs); asni_fig2, fig3 and fig4 then train nothing, and the numbers they
    show are the table's. A papermill parameter (gamma) reaches the runs: fig2 with another gamma computes its own."""
    nbs, first = paper
    assert first["runs_computed"] == 4
    for nb in ("asni_fig2", "asni_fig3", "asni_fig4"):
        p = nbs.run(nb, preset="smoke")
        assert p["runs_computed"] == 0 and p["runs_loaded"] > 0, (nb, p)
        out = nbs.out(nb)
        assert (out / f"{nb}.png").stat().st_size > 1000 and (out / f"{nb}.pdf").read_bytes()[:5] == b"%PDF-"
    for nb in ("asni_table2", "asni_fig2", "asni_fig3", "asni_fig4"):
        claims = nbs.claims(nb)
        assert "row" in claims.columns and (claims.source.str.strip() != "").all(), nb   # checks cite the algorithm too
    t2_claims = pd.read_csv(nbs.out("asni_table2") / "claims.csv")
    tol = t2_claims[t2_claims.claim.str.contains("reaches about the dense")]    # the tolerance Table 2 itself satisfies
    assert len(tol) == 2 and tol.condition.str.contains("<= 2.23 points").all() and (tol.kind == "paper").all()
    table = pd.read_parquet(nbs.out("asni_table2") / "results.parquet")
    curves = pd.read_parquet(nbs.out("asni_fig2") / "results.parquet")
    last = curves[curves.epoch == curves.epoch.max()].set_index("variant").value.sort_index()
    pd.testing.assert_series_equal(last, table.set_index("variant").acc.sort_index(), check_names=False)
    layers = pd.read_parquet(nbs.out("asni_fig4") / "results.parquet")
    a = table[table.variant == "A"].iloc[0]
    assert layers.kept.sum() / layers["size"].sum() == pytest.approx(a.density)
    t2 = pd.read_csv(nbs.out("asni_table2") / "table2.csv")
    assert t2.gamma[0] == 1 and t2.alpha[0] == 80
    p = nbs.run("asni_fig2", preset="smoke", gamma=2.0)
    assert p["gamma"] == 2.0 and p["runs_computed"] == 3   # A, and C, S from its mask; D loaded


def test_run_hashes_are_pinned(paper):
    "The run cache keys FIRST makes at smoke are the pinned ones (conftest.check_pinned_runs)."
    from conftest import check_pinned_runs
    nbs, _ = paper
    check_pinned_runs(FIRST, nbs.first_runs)
