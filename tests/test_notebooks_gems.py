"""Rare Gems notebooks under papermill: fig4 (`FIRST`) computes the sweep once; the other figures share its run cache,
as they do in `make repro`."""
import pandas as pd
import papermill as pm
import pytest


pytestmark = pytest.mark.heavy
FIRST = "fig4"   # computes the runs; the `paper` fixture (conftest) runs it once for this module



def test_rare_gems_figures_share_one_sweep(paper):
    """fig4 computes the sweep; fig2, fig7, fig1 and fig6 then load every run and train nothing; fig8 computes only
    IMP's three other variants (rounds and ticket finetunes) and loads GM and long-warm IMP."""
    nbs, first = paper
    assert first["runs_computed"] > 20          # (it also loads: IMP to 20% reuses the rounds of IMP to 50%)
    nbs.claims("fig4")
    for nb in ("fig2", "fig7", "fig1", "fig6"):
        p = nbs.run(nb, preset="smoke")
        assert p["runs_computed"] == 0 and p["runs_loaded"] > 0, (nb, p)
        nbs.claims(nb)
        assert (nbs.out(nb) / f"{nb}.png").stat().st_size > 1000
    p = nbs.run("fig8", preset="smoke")
    assert p["runs_loaded"] > 0 and p["runs_computed"] > 0
    nbs.claims("fig8")
    summary = pd.read_csv(nbs.out("fig8") / "summary.csv")
    assert set(summary.method) == {"GM", "IMP", "IMP long-cold", "IMP short-warm", "IMP short-cold"}
    s4 = pd.read_csv(nbs.out("fig4") / "summary.csv").set_index(["network", "method", "target"])
    s2 = pd.read_csv(nbs.out("fig2") / "summary.csv").set_index(["network", "method", "target"])
    pd.testing.assert_series_equal(s2.post_finetune_acc, s4.post_finetune_acc.loc[s2.index])   # the same runs


def test_fig1_takes_a_network_and_density(paper):
    "Another network and density of the sweep: fig1 draws them from fig4's runs (it trains nothing)."
    nbs, _ = paper
    p = nbs.run("fig1", preset="smoke", network="small-cnn", density=0.5)
    assert (p["network"], p["density"]) == ("small-cnn", 0.5)
    assert p["runs_computed"] == 0 and p["runs_loaded"] > 0
    claims = nbs.claims("fig1")
    assert set(claims.network) == {"small-cnn"} and set(claims.density) == {"0.5"}


def test_fig3_stacks_its_runs_by_the_stack_size(paper, monkeypatch):
    """fig3 with several λ trains its mining runs, Edge-Popup searches and finetunings first, as stacks of at most
    `runs.default_stack()` runs. With PAPER_REPRO_STACK=2 its three mining runs are a stack of two and one alone, and no
    run is in a stack of more than two (before, fig3 stacked all its mining runs whatever the setting, so the no-stacks
    half of `bench/repro_stacks.sh` stacked them too)."""
    import json
    nbs, _ = paper
    folders = lambda: {p.name: p for p in (nbs.root / "runs").iterdir()}
    before = set(folders())
    monkeypatch.setenv("PAPER_REPRO_STACK", "2")
    p = nbs.run("fig3", preset="smoke")
    new = {n: json.loads((f / "config.json").read_text()) for n, f in folders().items() if n not in before}
    assert p["runs_computed"] == len(new) > 3
    assert sorted(r["stack"] for r in new.values() if r["kind"] == "gem_miner") == [1, 2, 2]
    assert max(r["stack"] for r in new.values()) == 2
    claims = nbs.claims("fig3")
    assert claims.claim.str.startswith("as λ increases").any()


@pytest.mark.slow
def test_fig1_refuses_a_density_the_preset_lacks(notebooks):
    """`make test` proves this in two parts: test_gems.py::test_every_figure_preset_focuses_on_a_point_of_its_grid (the
    check fig1 calls) and test_cli.py::test_a_failing_notebook_exits_1_with_its_error (a notebook's error reaches you)."""
    with pytest.raises(pm.PapermillExecutionError, match="density=0.3"):
        notebooks.run("fig1", preset="smoke", density=0.3)


def test_run_hashes_are_pinned(paper):
    "The run cache keys FIRST makes at smoke are the pinned ones (conftest.check_pinned_runs)."
    from conftest import check_pinned_runs
    nbs, _ = paper
    check_pinned_runs(FIRST, nbs.first_runs)
