"""Experiment notebooks run under papermill the way `make repro` runs them, with parameters passed through."""
import json
import subprocess
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(nb, out_dir, monkeypatch, **parameters):
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(out_dir))
    monkeypatch.delenv("IN_TEST", raising=False)
    return pm.execute_notebook(str(ROOT / "nbs" / f"{nb}.ipynb"), str(out_dir / f"{nb}.ipynb"), parameters=parameters,
                               kernel_name="python3", cwd=str(ROOT / "nbs"), progress_bar=False)


def test_data_overview_under_papermill(tmp_path, monkeypatch):
    run("data_overview", tmp_path, monkeypatch, preset="smoke", samples_per_class=3)
    out = tmp_path / "smoke" / "data_overview"
    for f in ("samples", "augmented", "class_balance"):
        assert (out / f"{f}.png").stat().st_size > 1000 and (out / f"{f}.pdf").read_bytes()[:5] == b"%PDF-"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["preset"] == "smoke" and prov["samples_per_class"] == 3 and prov["dataset"] == "fashion-mnist"
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns) == ["claim", "measured", "condition", "holds"] and claims.holds.all()
    results = pd.read_parquet(out / "results.parquet")
    sizes = results.query("metric == 'size'").set_index("split").value
    assert sizes.to_dict() == {"train": 60000.0, "fit": 55000.0, "val": 5000.0, "test": 10000.0}


def test_misspelt_parameter_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown parameter\(s\) \['samples_per_clas'\]"):
        run("data_overview", tmp_path, monkeypatch, preset="smoke", samples_per_clas=3)


def test_make_repro_names_an_unknown_notebook():
    r = subprocess.run(["make", "-s", "repro", "NB=fig99"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "unknown notebook 'fig99'; experiment notebooks:" in r.stdout + r.stderr and "data_overview" in r.stdout + r.stderr


def test_fig3_one_lam_then_all_shares_the_cache(tmp_path, monkeypatch):
    """`-p lam` runs that GEM-MINER(lam) alone (with its Edge-Popup partner); the full run afterwards loads it from the
    run cache and computes only the rest; a third run computes nothing."""
    run("fig3", tmp_path, monkeypatch, preset="smoke", lam=3e-4)
    out = tmp_path / "smoke" / "fig3"
    summary = pd.read_csv(out / "summary.csv")
    assert summary.lam.tolist() == [3e-4, 3e-4] and summary.method.tolist() == ["GM", "EP"]
    first = json.loads((out / "provenance.json").read_text())
    assert first["runs_loaded"] == 0 and first["runs_computed"] == 4       # GM, its finetune, EP, its finetune
    run("fig3", tmp_path, monkeypatch, preset="smoke")
    second = json.loads((out / "provenance.json").read_text())
    assert second["runs_loaded"] == 4 and second["runs_computed"] == 2     # + GM(0) and its finetune
    run("fig3", tmp_path, monkeypatch, preset="smoke")
    third = json.loads((out / "provenance.json").read_text())
    assert third["runs_computed"] == 0 and third["runs_loaded"] == 6
    for f in ("fig3.png", "results.parquet", "summary.csv", "claims.csv"):
        assert (out / f).stat().st_size > 100
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns) == ["claim", "measured", "condition", "holds"] and len(claims) >= 5


def test_fig3_paper_lam_at_another_preset_keeps_its_paper_target(tmp_path, monkeypatch):
    """`-p lam 1.5e-5` is the README's command: at any preset it runs GEM-MINER(1.5e-5) to the paper's 1.4%."""
    run("fig3", tmp_path, monkeypatch, preset="smoke", lam=1.5e-5)
    s = pd.read_csv(tmp_path / "smoke" / "fig3" / "summary.csv").set_index("method")
    assert s.loc["GM", "lam"] == 1.5e-5 and s.loc["GM", "target"] == 0.014
    assert abs(s.loc["GM", "density"] - 0.014) < 1e-4 and s.loc["EP", "density"] == pytest.approx(s.loc["GM", "density"], abs=1e-4)


def test_fig3_unknown_lam_needs_a_density(tmp_path, monkeypatch):
    with pytest.raises(pm.PapermillExecutionError, match="give its target with -p density"):
        run("fig3", tmp_path, monkeypatch, preset="smoke", lam=1e-3)


def test_rare_gems_figures_share_one_sweep(tmp_path, monkeypatch):
    """fig4 computes the sweep; fig2, fig7, fig1 and fig6 then load every run and train nothing; fig8 computes only
    IMP's three other variants (rounds and ticket finetunes) and loads GM and long-warm IMP."""
    run("fig4", tmp_path, monkeypatch, preset="smoke")
    prov = lambda nb: json.loads((tmp_path / "smoke" / nb / "provenance.json").read_text())
    first = prov("fig4")
    assert first["runs_computed"] > 20          # (it also loads: IMP to 20% reuses the rounds of IMP to 50%)
    for nb in ("fig2", "fig7", "fig1", "fig6"):
        run(nb, tmp_path, monkeypatch, preset="smoke")
        p = prov(nb)
        assert p["runs_computed"] == 0 and p["runs_loaded"] > 0, (nb, p)
        claims = pd.read_csv(tmp_path / "smoke" / nb / "claims.csv")
        assert {"claim", "measured", "condition", "holds"} <= set(claims.columns) and len(claims) >= 3
        assert (tmp_path / "smoke" / nb / f"{nb}.png").stat().st_size > 1000
    run("fig8", tmp_path, monkeypatch, preset="smoke")
    p = prov("fig8")
    assert p["runs_loaded"] > 0 and p["runs_computed"] > 0
    summary = pd.read_csv(tmp_path / "smoke" / "fig8" / "summary.csv")
    assert set(summary.method) == {"GM", "IMP", "IMP long-cold", "IMP short-warm", "IMP short-cold"}
    s4 = pd.read_csv(tmp_path / "smoke" / "fig4" / "summary.csv").set_index(["network", "method", "target"])
    s2 = pd.read_csv(tmp_path / "smoke" / "fig2" / "summary.csv").set_index(["network", "method", "target"])
    pd.testing.assert_series_equal(s2.post_finetune_acc, s4.post_finetune_acc.loc[s2.index])   # the same runs


def test_fig1_takes_a_network_and_density(tmp_path, monkeypatch):
    run("fig1", tmp_path, monkeypatch, preset="smoke", network="small-cnn", density=0.5)
    p = json.loads((tmp_path / "smoke" / "fig1" / "provenance.json").read_text())
    assert (p["network"], p["density"]) == ("small-cnn", 0.5)
    with pytest.raises(pm.PapermillExecutionError, match="density=0.3"):
        run("fig1", tmp_path, monkeypatch, preset="smoke", density=0.3)


def test_sanity_figures_share_one_grid(tmp_path, monkeypatch):
    """sanity_figA1 computes LT/RR × IMP/OMP at every level; sanity_figD adds only WR and SD (at the focus densities);
    sanity_figF and sanity_figG then train nothing. The figures, claims and Jackpot tables are written, and the
    numbers the notebooks share are the same runs."""
    prov = lambda nb: json.loads((tmp_path / "smoke" / nb / "provenance.json").read_text())
    run("sanity_figA1", tmp_path, monkeypatch, preset="smoke")
    assert prov("sanity_figA1")["runs_computed"] > 20
    run("sanity_figD", tmp_path, monkeypatch, preset="smoke", rewind_epoch=1)
    d = prov("sanity_figD")
    assert d["runs_loaded"] > 0 and d["runs_computed"] == 3*2*3           # lrs × focus densities × (WR-IMP, WR-OMP, SD)
    for nb in ("sanity_figF", "sanity_figG"):
        run(nb, tmp_path, monkeypatch, preset="smoke")
        assert prov(nb)["runs_computed"] == 0 and prov(nb)["runs_loaded"] > 0, (nb, prov(nb))
    for nb in ("sanity_figA1", "sanity_figD", "sanity_figF", "sanity_figG"):
        out = tmp_path / "smoke" / nb
        assert (out / f"{nb}.png").stat().st_size > 1000 and (out / f"{nb}.pdf").read_bytes()[:5] == b"%PDF-"
        claims = pd.read_csv(out / "claims.csv")
        assert {"claim", "measured", "condition", "holds"} <= set(claims.columns) and len(claims) >= 3, nb
    jack = pd.read_csv(tmp_path / "smoke" / "sanity_figF" / "jackpot.csv")
    assert set(jack.query("appendix == 'C'").lr) == {0.005, 0.01, 0.1}
    assert set(jack.condition) >= {"A_LT ≈ A_PRE", "A_LT > A_SD", "A_LT > A_RR", "⑤ ∃ lr: ≈ well-trained dense"}
    a1 = pd.read_parquet(tmp_path / "smoke" / "sanity_figA1" / "results.parquet").set_index(["lr", "variant", "level"]).acc
    f = pd.read_parquet(tmp_path / "smoke" / "sanity_figF" / "results.parquet").set_index(["lr", "variant", "level"]).acc
    common = f.index.intersection(a1.index)
    assert len(common) >= 3*(1 + 4*2)
    pd.testing.assert_series_equal(f.loc[common], a1.loc[common])
    corr = pd.read_parquet(tmp_path / "smoke" / "sanity_figG" / "results.parquet")
    assert set(corr.variant) == {"dense", "LT-IMP", "RR-IMP"} and corr.R_p.between(0, 1).all()


def test_sanity_figG_checks_its_density(tmp_path, monkeypatch):
    with pytest.raises(pm.PapermillExecutionError, match="density=0.3"):
        run("sanity_figG", tmp_path, monkeypatch, preset="smoke", density=0.3)


def test_rti_figures_share_one_sweep(tmp_path, monkeypatch):
    """rti_fig1 computes IMP and its reinitialisation at every batch size (with and without warm-up); rti_fig4, 5 and 6
    then train nothing, rti_fig2 only the second copy of each instability ticket, rti_fig8 nothing; rti_fig3 and
    rti_fig7 only their repellent/attractive and weight-decay rounds. The same runs give the same numbers."""
    prov = lambda nb: json.loads((tmp_path / "smoke" / nb / "provenance.json").read_text())
    run("rti_fig1", tmp_path, monkeypatch, preset="smoke")
    assert prov("rti_fig1")["runs_computed"] == 2*2*2*4            # batch × warm-up × (IMP, reinit) × rounds (all four round 0s differ)
    for nb in ("rti_fig4", "rti_fig5", "rti_fig6", "rti_fig8"):
        run(nb, tmp_path, monkeypatch, preset="smoke")
        assert prov(nb)["runs_computed"] == 0 and prov(nb)["runs_loaded"] > 0, (nb, prov(nb))
    run("rti_fig2", tmp_path, monkeypatch, preset="smoke")
    assert prov("rti_fig2")["runs_computed"] == 2*2                 # batch sizes × instability rounds: the seed + 1 copies
    run("rti_fig3", tmp_path, monkeypatch, preset="smoke")
    assert prov("rti_fig3")["runs_computed"] == 2*2*3              # (repellent, attractive) × (IMP, reinit) × rounds 1-3
    run("rti_fig7", tmp_path, monkeypatch, preset="smoke")
    assert prov("rti_fig7")["runs_computed"] == 2*4                # (IMP, reinit) × rounds, with the other weight decay
    for nb in ("rti_fig1", "rti_fig2", "rti_fig3", "rti_fig4", "rti_fig5", "rti_fig6", "rti_fig7", "rti_fig8"):
        out = tmp_path / "smoke" / nb
        assert (out / f"{nb}.png").stat().st_size > 1000 and (out / f"{nb}.pdf").read_bytes()[:5] == b"%PDF-"
        claims = pd.read_csv(out / "claims.csv")
        assert {"claim", "measured", "condition", "holds"} <= set(claims.columns) and len(claims) >= 3, nb
    f1 = pd.read_parquet(tmp_path / "smoke" / "rti_fig1" / "results.parquet").set_index(["label", "variant", "round"])
    f6 = pd.read_parquet(tmp_path / "smoke" / "rti_fig6" / "results.parquet").set_index(["label", "variant", "round"])
    pd.testing.assert_series_equal(f6.threshold, f1.threshold.loc[f6.index])
    f3 = pd.read_parquet(tmp_path / "smoke" / "rti_fig3" / "results.parquet").set_index(["label", "variant", "round"])
    plain = f3.index.intersection(f1.index)
    assert len(plain) == 2*2*4
    pd.testing.assert_series_equal(f3.acc.loc[plain], f1.acc.loc[plain])


def test_rti_fig4_appendix_variants(tmp_path, monkeypatch):
    """Appendix B's Euclidean distance, and Appendix D's one-optimum repulsion at the stable batch size."""
    run("rti_fig4", tmp_path, monkeypatch, preset="smoke", distance="euclidean", lam_r=2.0, only_last=True)
    p = json.loads((tmp_path / "smoke" / "rti_fig4" / "provenance.json").read_text())
    assert (p["distance"], p["lam_r"], p["only_last"], p["batch_sizes"]) == ("euclidean", 2.0, True, [512])
    t = pd.read_parquet(tmp_path / "smoke" / "rti_fig4" / "results.parquet")
    assert (t.distance >= 0).all() and t.distance.max() > 0
    with pytest.raises(pm.PapermillExecutionError, match="distance='manhattan'"):
        run("rti_fig4", tmp_path, monkeypatch, preset="smoke", distance="manhattan")


def test_asni_notebooks_share_the_table_runs(tmp_path, monkeypatch):
    """asni_table2 computes D, A, C and S (4 runs); asni_fig2, fig3 and fig4 then train nothing, and the numbers they
    show are the table's. A papermill parameter (gamma) reaches the runs: fig2 with another gamma computes its own."""
    prov = lambda nb: json.loads((tmp_path / "smoke" / nb / "provenance.json").read_text())
    run("asni_table2", tmp_path, monkeypatch, preset="smoke")
    assert prov("asni_table2")["runs_computed"] == 4
    for nb in ("asni_fig2", "asni_fig3", "asni_fig4"):
        run(nb, tmp_path, monkeypatch, preset="smoke")
        assert prov(nb)["runs_computed"] == 0 and prov(nb)["runs_loaded"] > 0, (nb, prov(nb))
        out = tmp_path / "smoke" / nb
        assert (out / f"{nb}.png").stat().st_size > 1000 and (out / f"{nb}.pdf").read_bytes()[:5] == b"%PDF-"
        claims = pd.read_csv(out / "claims.csv")
        assert {"claim", "measured", "condition", "holds"} <= set(claims.columns) and len(claims) >= 3, nb
    table = pd.read_parquet(tmp_path / "smoke" / "asni_table2" / "results.parquet")
    curves = pd.read_parquet(tmp_path / "smoke" / "asni_fig2" / "results.parquet")
    last = curves[curves.epoch == curves.epoch.max()].set_index("variant").value.sort_index()
    pd.testing.assert_series_equal(last, table.set_index("variant").acc.sort_index(), check_names=False)
    layers = pd.read_parquet(tmp_path / "smoke" / "asni_fig4" / "results.parquet")
    a = table[table.variant == "A"].iloc[0]
    assert layers.kept.sum() / layers["size"].sum() == pytest.approx(a.density)
    t2 = pd.read_csv(tmp_path / "smoke" / "asni_table2" / "table2.csv")
    assert t2.gamma[0] == 1 and t2.alpha[0] == 80
    run("asni_fig2", tmp_path, monkeypatch, preset="smoke", gamma=2.0)
    assert prov("asni_fig2")["gamma"] == 2.0 and prov("asni_fig2")["runs_computed"] == 3   # A, and C, S from its mask; D loaded
