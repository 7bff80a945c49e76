"""Experiment notebooks run under papermill the way `make repro` runs them, with parameters passed through.

Each paper's notebooks share one run cache in their own file (test_notebooks_gems, _rti, _sanity, _asni), so each
notebook is executed once at smoke; this file holds what concerns every notebook, and fig3's lam sweep."""
import re
import subprocess
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

from paper_repro.core import experiment_notebooks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.heavy


def test_every_experiment_notebook_is_executed_by_a_test():
    """`make test` executes each experiment notebook at smoke in the notebook tests, under papermill (nbdev_test skips
    them: see the Makefile), so every one must be named there (by `Notebooks.run` or the CLI's `paper-repro run`)."""
    executed = set()
    for f in (*ROOT.glob("tests/test_notebooks*.py"), ROOT / "tests" / "test_cli.py"):
        executed |= set(re.findall(r'"(?:nbs/)?(\w+)(?:\.ipynb)?"', f.read_text()))
    missing = sorted(set(experiment_notebooks(ROOT / "nbs")) - executed)
    assert not missing, f"experiment notebooks no test executes: {missing}"


def test_misspelt_parameter_is_an_error(notebooks):
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown parameter\(s\) \['samples_per_clas'\]"):
        notebooks.run("data_overview", preset="smoke", samples_per_clas=3)


def test_make_repro_names_an_unknown_notebook():
    r = subprocess.run(["make", "-s", "repro", "NB=fig99"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "unknown notebook 'fig99'; experiment notebooks:" in r.stdout + r.stderr and "data_overview" in r.stdout + r.stderr


def test_fig3_one_lam_then_all_shares_the_cache(notebooks):
    """`-p lam` runs that GEM-MINER(lam) alone (with its Edge-Popup partner); the full run afterwards loads it from the
    run cache and computes only the rest; a third run computes nothing. The claims: every row has a kind from
    CLAIM_KINDS (paper rows a source); with one λ the claims about several λ are not applicable (empty), never False;
    the summary keeps λ as given (shown unrounded: test_cli.py)."""
    # (a paper λ alone, 1.5e-5 to its 1.4%, is test_cli.py::test_run_fig3_smoke_one_lam's run: one fig3 execution less)
    first = notebooks.run("fig3", preset="smoke", lam=3e-4)              # a paper λ: its paper target, 5%
    out = notebooks.out("fig3")
    summary = pd.read_csv(out / "summary.csv")
    assert summary.lam.tolist() == [3e-4, 3e-4] and summary.method.tolist() == ["GM", "EP"]
    assert summary.target.iloc[0] == 0.05
    assert first["runs_loaded"] == 0 and first["runs_computed"] == 4       # GM, its finetune, EP, its finetune
    one = notebooks.claims("fig3")
    several = one[one.claim.str.startswith("as λ increases")]
    assert len(several) == 1 and (several.holds == "").all()               # not applicable with one λ
    assert (one[one.claim.str.startswith("GEM-MINER(0)")].holds == "").all()
    second = notebooks.run("fig3", preset="smoke")
    # loads GM(3e-4) to 5%, its finetune, EP and its finetune; computes GM(0) and its finetune, and GM(3e-4) without a target
    assert second["runs_loaded"] == 4 and second["runs_computed"] == 3
    third = notebooks.run("fig3", preset="smoke")
    assert third["runs_computed"] == 0 and third["runs_loaded"] == 7
    for f in ("fig3.png", "results.parquet", "summary.csv", "claims.csv"):
        assert (out / f).stat().st_size > 100
    summary = pd.read_csv(out / "summary.csv")
    free = summary[(summary.method == "GM") & summary.target.isna()]
    assert sorted(free.lam) == [0.0, 3e-4] and free[free.lam > 0].post_finetune_acc.isna().all()   # mined only
    claims = notebooks.claims("fig3", min_rows=8)
    assert set(claims.kind) == {"paper", "regime", "check"}
    assert (claims[claims.claim.str.startswith("as λ increases")].holds != "").all()   # two λ without a target
    assert claims[claims.kind == "check"].claim.tolist() == ["the freezing bound holds after every freezing event"]



@pytest.mark.slow
def test_fig3_unknown_lam_needs_a_density(notebooks):
    "In `make test`: test_cli.py::test_a_failing_notebook_exits_1_with_its_error runs fig3 with the same lam."
    with pytest.raises(pm.PapermillExecutionError, match="give its target with -p density"):
        notebooks.run("fig3", preset="smoke", lam=1e-3)
