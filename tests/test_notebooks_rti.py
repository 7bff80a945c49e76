"""Towards Understanding IMP notebooks under papermill: rti_fig1 (`FIRST`) computes the batch-size sweep once; the
other figures share its run cache, as they do in `make repro`."""
import json

import pandas as pd
import papermill as pm
import pytest


pytestmark = pytest.mark.heavy
FIRST = "rti_fig1"   # computes the runs; the `paper` fixture (conftest) runs it once for this module

FIGURES = ("rti_fig1", "rti_fig2", "rti_fig3", "rti_fig4", "rti_fig5", "rti_fig6", "rti_fig7", "rti_fig8")



def test_rti_figures_share_one_sweep(paper):
    """rti_fig1 computes IMP and its reinitialisation at every batch size (with and without warm-up); rti_fig4, 5 and 6
    then train nothing, rti_fig2 only the second copy of each instability ticket, rti_fig8 nothing; rti_fig3 and
    rti_fig7 only their repellent/attractive and weight-decay rounds. The same runs give the same numbers."""
    nbs, first = paper
    assert first["runs_computed"] == 2*2*2*4            # batch × warm-up × (IMP, reinit) × rounds (all four round 0s differ)
    for nb in ("rti_fig4", "rti_fig5", "rti_fig6", "rti_fig8"):
        p = nbs.run(nb, preset="smoke")
        assert p["runs_computed"] == 0 and p["runs_loaded"] > 0, (nb, p)
    before = {f.name for f in (nbs.root / "runs").iterdir()}
    assert nbs.run("rti_fig2", preset="smoke")["runs_computed"] == 2*2    # batch sizes × instability rounds: the seed + 1 copies
    copies = [json.loads((f / "config.json").read_text()) for f in (nbs.root / "runs").iterdir() if f.name not in before]
    assert sorted((c["kind"], c["stack"]) for c in copies) == [("finetune", 2)]*4        # a stack of two per batch size
    assert nbs.run("rti_fig3", preset="smoke")["runs_computed"] == 2*2*3  # (repellent, attractive) × (IMP, reinit) × rounds 1-3
    assert nbs.run("rti_fig7", preset="smoke")["runs_computed"] == 2*4    # (IMP, reinit) × rounds, with the other weight decay
    for nb in FIGURES:
        out = nbs.out(nb)
        assert (out / f"{nb}.png").stat().st_size > 1000 and (out / f"{nb}.pdf").read_bytes()[:5] == b"%PDF-"
        nbs.claims(nb)
    f1 = pd.read_parquet(nbs.out("rti_fig1") / "results.parquet").set_index(["label", "variant", "round"])
    f6 = pd.read_parquet(nbs.out("rti_fig6") / "results.parquet").set_index(["label", "variant", "round"])
    pd.testing.assert_series_equal(f6.threshold, f1.threshold.loc[f6.index])
    f3 = pd.read_parquet(nbs.out("rti_fig3") / "results.parquet").set_index(["label", "variant", "round"])
    plain = f3.index.intersection(f1.index)
    assert len(plain) == 2*2*4
    pd.testing.assert_series_equal(f3.acc.loc[plain], f1.acc.loc[plain])
    # rti_fig8's barrier is over the MEAN endpoint error (Frankle et al. 2020a, Maene et al. 4.3), the larger-endpoint one named apart
    f8, p8 = (pd.read_parquet(nbs.out("rti_fig8") / f) for f in ("results.parquet", "paths.parquet"))
    for _, row in f8.iterrows():
        e = p8[(p8.seed == row.seed) & (p8["round"] == row["round"])].set_index("alpha").error
        assert row.error_barrier == pytest.approx(e.max() - (e[0.0] + e[1.0])/2, abs=1e-12)
        assert row.error_barrier_max == pytest.approx(e.max() - max(e[0.0], e[1.0]), abs=1e-12)
    f2 = pd.read_parquet(nbs.out("rti_fig2") / "results.parquet")
    assert (f2.instability >= f2.error_barrier_max).all() and (f2.error_barrier_max >= 0).all()


def test_rti_fig4_appendix_variants(paper):
    """Appendix B's Euclidean distance, and Appendix D's one-optimum repulsion at the stable batch size (its plain
    round 0 comes from rti_fig1's runs)."""
    nbs, _ = paper
    p = nbs.run("rti_fig4", preset="smoke", distance="euclidean", lam_r=2.0, only_last=True)
    assert (p["distance"], p["lam_r"], p["only_last"], p["batch_sizes"]) == ("euclidean", 2.0, True, [512])
    assert p["runs_loaded"] > 0
    t = pd.read_parquet(nbs.out("rti_fig4") / "results.parquet")
    assert (t.distance >= 0).all() and t.distance.max() > 0
    claims = nbs.claims("rti_fig4", min_rows=1)           # appendix D's own claim: the checkerboard of one-optimum repulsion
    assert len(claims) == 1 and "last but one" in claims.claim[0] and claims.source[0] == "Sec. 3.1; App. D, Fig. 17"


@pytest.mark.slow
def test_rti_fig4_refuses_an_unknown_distance(notebooks):
    """`make test` proves this in two parts: test_connectivity.py::test_distance_bad_input (the check rti_fig4 calls)
    and test_cli.py::test_a_failing_notebook_exits_1_with_its_error (a notebook's error reaches you)."""
    with pytest.raises(pm.PapermillExecutionError, match="distance='manhattan'"):
        notebooks.run("rti_fig4", preset="smoke", distance="manhattan")


def test_run_hashes_are_pinned(paper):
    "The run cache keys FIRST makes at smoke are the pinned ones (conftest.check_pinned_runs)."
    from conftest import check_pinned_runs
    nbs, _ = paper
    check_pinned_runs(FIRST, nbs.first_runs)
