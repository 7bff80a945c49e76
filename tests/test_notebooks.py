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
