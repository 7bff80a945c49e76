"""The `paper-repro` command: list, run (papermill, into the paths `make repro` uses), status; bad input exits 2."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from paper_repro.cli import UsageError, main, notebook_parameters, parse_parameters, parse_value, run_status, scan_runs
from paper_repro.core import experiment_notebooks
from paper_repro.runs import CHECKPOINT, lock_record

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.heavy   # runs notebooks and the console script
SCRIPT = Path(sys.executable).parent / "paper-repro"


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def paper_repro(*argv, outputs, cwd):
    """The installed console script in a subprocess, with its own outputs folder and without IN_TEST."""
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"} | {"PAPER_REPRO_OUTPUTS": str(outputs)}
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-c", "import sys; from paper_repro.cli import main; sys.exit(main())"]
    return subprocess.run([*cmd, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_console_script_is_installed():
    assert SCRIPT.exists(), "run `pip install -e .` so the paper-repro console script exists"


def test_list_shows_every_notebook_with_its_parameters(capsys):
    code, out, _ = cli(capsys, "list")
    assert code == 0
    names = experiment_notebooks()
    assert len(names) > 20
    for n in names:
        assert f"\n{n}: " in out, n
    assert out.count('preset = "auto"') == len(names)
    fig3 = out.split("\nfig3: ")[1].split("\n\n")[0]
    for line in ('preset = "auto"', "lam = None", "density = None", "seed = None", "# a float runs GEM-MINER(lam) alone"):
        assert line in fig3, line
    assert "presets: auto" in out and "smoke, cpu, paper" in out


def test_list_json_and_one_notebook(capsys):
    code, out, _ = cli(capsys, "list", "--json", "fig3", "data_overview.ipynb")
    assert code == 0
    d = json.loads(out)
    assert d["presets"] == ["auto", "smoke", "cpu", "paper"] and list(d["notebooks"]) == ["fig3", "data_overview"]
    p = d["notebooks"]["fig3"]["parameters"]
    assert list(p)[:4] == ["preset", "lam", "density", "seed"]
    assert p["preset"]["default"] == '"auto"' and p["lam"]["default"] == "None" and "target density" in p["density"]["help"]


def test_parameters_papermill_cannot_parse_are_still_parameters():
    """sanity_figD's `rewind_epoch` line has '=' in its comment, which papermill's inspector skips."""
    src = "".join("".join(c["source"]) for c in json.loads((ROOT / "nbs" / "sanity_figD.ipynb").read_text())["cells"]
                  if "parameters" in c["metadata"].get("tags", []))
    if "rewind_epoch" not in src:
        pytest.skip("sanity_figD has no rewind_epoch parameter any more")
    ps = notebook_parameters("sanity_figD")
    assert ps["rewind_epoch"]["default"] == "None" and "5% of 160" in ps["rewind_epoch"]["help"]


@pytest.mark.parametrize("argv, message, known", [
    (("run", "fig99"), "unknown notebook 'fig99'", ["fig3", "data_overview", "rti_fig1", "asni_table2"]),
    (("list", "fig99"), "unknown notebook 'fig99'", ["fig3", "sanity_figG"]),
    (("run", "fig3", "-p", "lamb=1.5e-5"), "fig3: unknown parameter 'lamb' (did you mean 'lam'?)", ["preset", "lam", "density", "seed"]),
    (("run", "fig3", "--preset", "gpu"), "unknown preset 'gpu'", ["auto, smoke, cpu, paper"]),
    (("run", "fig3", "-p", "preset=fast"), "unknown preset 'fast'", ["auto, smoke, cpu, paper"]),
    (("run", "fig3", "-p", "lam"), "-p 'lam': write -p name=value", []),
    (("run", "fig3", "-p", "lam=1", "seed"), "-p 'seed': write -p name=value", []),
    (("run", "fig3", "-p", "seeds=[0,", "1]"), "neither JSON nor a Python literal (quote it for the shell", []),
    (("run", "fig3", "-p", "lamb", "1.5e-5"), "unknown parameter 'lamb'", ["density"]),
    (("run", "fig3", "--preset", "smoke", "-p", "preset=cpu"), "--preset or -p preset", []),
    (("run", "fig4", "-p", "executor=slurm"), "executor='slurm' is not known", ["'serial', 'pool', 'submitit', 'ray'"]),
])
def test_bad_input_exits_2_naming_the_known_ones(capsys, argv, message, known):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err, err
    for k in known:
        assert k in err, (k, err)


def test_usage_errors_exit_2(capsys):
    assert cli(capsys)[0] == 2                      # no subcommand
    code, _, err = cli(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err
    assert cli(capsys, "--help")[0] == 0


def test_p_values_are_read_as_papermill_reads_them():
    assert parse_parameters(["lam=1.5e-5", "seed=3", "on=True", "off=False", "x=None", "bn=recompute", "s=1e-5x"]) == \
        dict(lam=1.5e-5, seed=3, on=True, off=False, x=None, bn="recompute", s="1e-5x")
    assert type(parse_value("1.5e-5")) is float and type(parse_value("3")) is int and type(parse_value("3.0")) is float
    assert parse_value("true") == "true" and parse_value('"x"') == '"x"'               # as papermill: only exact True/False
    assert parse_parameters(['seeds=[0, 1]', "models=['resnet20']", 'd={"a": [1]}', "t=a=b"]) == \
        dict(seeds=[0, 1], models=["resnet20"], d={"a": [1]}, t="a=b")
    assert parse_parameters([("lam", "1.5e-5"), ("expr", "a=b")]) == dict(lam=1.5e-5, expr="a=b")  # papermill's `-p lam 1.5e-5`
    for bad in ("lam", "=1", "1x=2", "seeds=[0,"):
        with pytest.raises(UsageError, match="-p"):
            parse_parameters([bad])


def make_cache(root: Path):
    done = root / "gem_miner-0123456789abcdef"
    done.mkdir(parents=True)
    (done / "done").write_text("2026-01-01\n")
    (done / "tensors.pt").write_bytes(b"0" * 3000)
    done2 = root / "imp-round-00000000000000ff"
    done2.mkdir()
    (done2 / "done").write_text("x")
    live = root / "gem_miner-fedcba9876543210.partial"              # held by a live process, resumable
    live.mkdir()
    (live / "lock").write_text(json.dumps(lock_record(1)))                 # pid 1 is alive (with its start time)
    (live / CHECKPOINT).write_bytes(b"0" * 500)
    dead = root / "imp-round-00000000000000aa.partial"              # killed: its process is gone
    dead.mkdir()
    (dead / "lock").write_text(json.dumps(lock_record(999999999)))
    nodone = root / "imp-round-00000000000000bb"                    # looks final but has no `done`: not a finished run
    nodone.mkdir()
    (root / "README.txt").write_text("not a run")
    (root / "scratch").mkdir()


def test_status_counts_runs_by_kind(tmp_path):
    make_cache(tmp_path)
    runs = scan_runs(tmp_path)
    assert len(runs) == 5 and set(runs.kind) == {"gem_miner", "imp-round"}
    st = run_status(tmp_path)
    assert list(st.columns) == ["done", "partial", "running", "resumable", "bytes"]
    lock = (tmp_path / "gem_miner-fedcba9876543210.partial" / "lock").stat().st_size
    assert st.loc["gem_miner"].tolist() == [1, 1, 1, 1, len("2026-01-01\n") + 3000 + lock + 500]
    assert st.loc["imp-round"].tolist() == [1, 2, 0, 0, 1 + (tmp_path / "imp-round-00000000000000aa.partial" / "lock").stat().st_size]
    assert st.loc["total", ["done", "partial", "running", "resumable"]].tolist() == [2, 3, 1, 1]
    assert st.loc["total", "bytes"] == st.loc[["gem_miner", "imp-round"], "bytes"].sum()


def test_status_command(capsys, tmp_path, monkeypatch):
    make_cache(tmp_path / "runs")
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    code, out, _ = cli(capsys, "status")                             # default root: $PAPER_REPRO_OUTPUTS/runs
    assert code == 0 and str(tmp_path / "runs") in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["gem_miner"][1:5] == ["1", "1", "1", "1"] and rows["total"][1:3] == ["2", "3"]
    total = run_status(tmp_path / "runs").loc["gem_miner", "bytes"]        # the lock's JSON is ~100 bytes
    assert 3500 < total < 3800 and rows["gem_miner"][5:] == [f"{total / 1000:.1f}", "kB"]
    code, out, _ = cli(capsys, "status", "--root", str(tmp_path / "empty"))
    assert code == 0 and "does not exist yet" in out and out.splitlines()[-1].split()[:3] == ["total", "0", "0"]


def test_run_fig3_smoke_one_lam(tmp_path):
    """The acceptance command, through the installed script, from outside the checkout (~10 s here). `-p lam 1.5e-5`
    is the README's command: at any preset it runs GEM-MINER(1.5e-5) to the paper's 1.4%, and Edge-Popup to the same."""
    r = paper_repro("run", "fig3", "--preset", "smoke", "-p", "lam=1.5e-5", outputs=tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    executed = tmp_path / "fig3" / "fig3.ipynb"                      # where `make repro NB=fig3` puts it
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "lam = 1.5e-05" in "".join(injected[0]["source"])
    assert 'preset = "smoke"' in "".join(injected[0]["source"])
    out = tmp_path / "smoke" / "fig3"
    assert (out / "fig3.png").stat().st_size > 1000 and (out / "fig3.pdf").read_bytes()[:5] == b"%PDF-"
    assert json.loads((out / "provenance.json").read_text())["preset"] == "smoke"
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["GM", "lam"] == 1.5e-5 and summary.loc["GM", "target"] == 0.014
    assert abs(summary.loc["GM", "density"] - 0.014) < 1e-4
    assert summary.loc["EP", "density"] == pytest.approx(summary.loc["GM", "density"], abs=1e-4)
    shown = [o for c in nb["cells"] if c["id"] == "5911519e" for o in c["outputs"] if "data" in o]
    assert "1.5e-05" in "".join(shown[-1]["data"]["text/plain"])                # λ as given (table rounding once showed 0.0)
    claims = pd.read_csv(out / "claims.csv", dtype=str, keep_default_na=False)
    assert (claims[claims.claim.str.startswith("as λ increases")].holds == "").all()   # not applicable with one λ
    assert (claims[claims.claim.str.startswith("GEM-MINER(0)")].holds == "").all()
    assert "fig3 took" in r.stdout and "wrote fig3/: fig3.ipynb" in r.stdout and "fig3.png" in r.stdout
    assert "Executing Cell" in r.stdout + r.stderr                   # --log-output, as make repro
    st = paper_repro("status", outputs=tmp_path, cwd=tmp_path)        # the runs it computed are in the cache
    assert st.returncode == 0
    rows = {l.split()[0]: l.split() for l in st.stdout.splitlines()[2:]}
    assert rows["gem_miner"][1] == "1" and rows["edge_popup"][1] == "1" and rows["total"][1:3] == ["4", "0"]


def test_run_data_overview_smoke(tmp_path):
    """From the checkout, with the notebook's path and papermill's `-p name value` form; the notebook writes its
    figures, provenance, claims and the split sizes."""
    r = paper_repro("run", "nbs/data_overview.ipynb", "-p", "preset=smoke", "-p", "samples_per_class", "2",
                    outputs=tmp_path, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "data_overview" / "data_overview.ipynb").exists()
    out = tmp_path / "smoke" / "data_overview"
    for f in ("samples", "augmented", "class_balance"):
        assert (out / f"{f}.png").stat().st_size > 1000 and (out / f"{f}.pdf").read_bytes()[:5] == b"%PDF-"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["samples_per_class"] == 2 and prov["preset"] == "smoke" and prov["dataset"] == "fashion-mnist"
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns) == ["kind", "claim", "source", "measured", "condition", "holds"] and claims.holds.all()
    assert (claims.kind == "check").all()   # no paper makes claims about the data
    sizes = pd.read_parquet(out / "results.parquet").query("metric == 'size'").set_index("split").value
    assert sizes.to_dict() == {"train": 60000.0, "fit": 55000.0, "val": 5000.0, "test": 10000.0}


def test_a_failing_notebook_exits_1_with_its_error(tmp_path):
    """fig3's own check: a lam the presets lack needs a density."""
    r = paper_repro("run", "fig3", "--preset", "smoke", "-p", "lam=1e-3", outputs=tmp_path, cwd=tmp_path)
    assert r.returncode == 1
    assert "fig3 failed in cell" in r.stderr and "ValueError" in r.stderr and "give its target with -p density" in r.stderr
    assert str(tmp_path / "fig3" / "fig3.ipynb") in r.stderr
