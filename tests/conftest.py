"""Shared pytest setup: markers, progress lines, the order files run in, Fashion-MNIST loaded once per process, and
`Notebooks`, the one way tests execute experiment notebooks (papermill, as `make repro` does).

`make test` runs this suite on both cores with pytest-xdist (`-n 2 --dist loadfile`): each test file runs whole on
one worker process, so a module-scoped fixture (a trained run, a notebook's run cache) is computed once. Files
marked `heavy` (they execute notebooks or start processes) are handed out first, so the two workers finish
together instead of one of them ending on a long file alone."""
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = os.environ.get("PYTEST_XDIST_WORKER")   # "gw0", "gw1", ... in a pytest-xdist worker; None otherwise
_config = None


def pytest_configure(config):
    global _config
    _config = config
    config.addinivalue_line("markers", "slow: longer than a few seconds; `make test` skips them, `make test-slow` runs them")
    config.addinivalue_line("markers", "heavy: executes notebooks or starts processes; scheduled before the light files")
    if WORKER:
        # One process per core: two threads per process would make the workers wait on each other's cores
        # (small networks on 2 busy cores are several times slower with 2 threads than with one).
        torch.set_num_threads(1)


def progress(line: str):
    """Write one progress line to the terminal while a test runs, also from a pytest-xdist worker (whose stdout is
    not the terminal: its stderr is, once pytest's capture is suspended)."""
    capman = _config.pluginmanager.getplugin("capturemanager") if _config else None
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        sys.stderr.write(f"{f'[{WORKER}] ' if WORKER else ''}{line}\n"); sys.stderr.flush()


def pytest_collection_modifyitems(config, items):
    """Heavy files first (stable otherwise). Every worker collects and sorts alike, so xdist sees one order."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


_started: set[str] = set()


def pytest_runtest_logstart(nodeid, location):
    """Name each test file as it starts, so a long file is visible while it runs. (Under xdist the controller hears
    of every worker's tests; the workers stay quiet here.)"""
    if WORKER: return
    file = nodeid.split("::")[0]
    if file not in _started:
        _started.add(file)
        progress(f"▶ {file}")


def pytest_runtest_logreport(report):
    "Name each test that took 5 s or more, with its time."
    if WORKER: return
    if report.when == "call" and report.duration >= 5:
        progress(f"  {report.duration:5.1f} s {report.nodeid}")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fmnist():
    """Fashion-MNIST train and test as the library loads them (`make test` makes the data available first)."""
    from paper_repro.data import load_dataset
    return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="module")
def one_thread():
    """Small networks on 2 busy cores: OpenMP's barrier waits make each call far slower with 2 threads than with one,
    so modules that train small networks run single-threaded (`pytestmark = pytest.mark.usefixtures("one_thread")`),
    and the setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tmp_outputs(tmp_path, monkeypatch):
    """A run cache (and outputs folder) of the test's own."""
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path))
    return tmp_path


class Notebooks:
    """Experiment notebooks executed with papermill the way `make repro` executes them (kernel python3, cwd nbs/, IN_TEST
    unset), all into one outputs folder `root`, so they share one run cache as a paper's notebooks do.

    One difference, after the last cell: the kernel is stopped at once instead of asked to shut down (papermill's
    `shutdown_kernel="immediate"`): everything the notebook writes is written by then, and a graceful shutdown of a
    kernel that imported torch costs 2-3 s against 0.7 s (measured), about a minute over the suite's ~35 executions."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def run(self, nb: str, **parameters) -> dict:
        "Execute nbs/<nb>.ipynb with `parameters`; return the provenance it wrote."
        import papermill as pm
        t0 = time.monotonic()
        progress(f"  papermill {nb}" + "".join(f" -p {k} {v}" for k, v in parameters.items()))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PAPER_REPRO_OUTPUTS", str(self.root))
            mp.delenv("IN_TEST", raising=False)
            try:
                pm.execute_notebook(str(ROOT / "nbs" / f"{nb}.ipynb"), str(self.root / f"{nb}.ipynb"), parameters=parameters,
                                    kernel_name="python3", cwd=str(ROOT / "nbs"), progress_bar=False,
                                    shutdown_kernel="immediate")
            finally:
                progress(f"  papermill {nb}: {time.monotonic() - t0:.1f} s")
        return self.provenance(nb)

    def out(self, nb: str) -> Path:
        "The folder a smoke-preset notebook writes its figures and tables to."
        return self.root / "smoke" / nb

    def provenance(self, nb: str) -> dict:
        return json.loads((self.out(nb) / "provenance.json").read_text())

    def claims(self, nb: str, min_rows: int = 3):
        """The notebook's claims.csv (all columns as text), checked as the scoreboard (`paper-repro claims`) reads it:
        its id columns, then kind, claim, source, measured, condition, holds; every kind one of CLAIM_KINDS; at least
        one `paper` row, each with its source; every claim and condition stated; holds True, False or empty
        (undecided: not tested or not applicable)."""
        import pandas as pd
        from paper_repro.core import CLAIM_KINDS
        claims = pd.read_csv(self.out(nb) / "claims.csv", dtype=str, keep_default_na=False)
        assert list(claims.columns[-6:]) == ["kind", "claim", "source", "measured", "condition", "holds"], (nb, list(claims.columns))
        assert len(claims) >= min_rows, (nb, len(claims))
        assert set(claims.kind) <= set(CLAIM_KINDS), (nb, sorted(set(claims.kind) - set(CLAIM_KINDS)))
        paper = claims[claims.kind == "paper"]
        assert len(paper) and (paper.source.str.strip() != "").all(), (nb, paper[["claim", "source"]])
        assert (claims.claim.str.strip() != "").all() and (claims.condition.str.strip() != "").all(), nb
        assert set(claims.holds) <= {"True", "False", ""}, (nb, sorted(set(claims.holds)))
        return claims


@pytest.fixture
def notebooks(tmp_path) -> Notebooks:
    "Notebooks with an outputs folder (and run cache) of the test's own."
    return Notebooks(tmp_path)


@pytest.fixture(scope="module")
def paper(tmp_path_factory, request) -> tuple[Notebooks, dict]:
    """A paper's notebooks, sharing one outputs folder (and run cache) for the whole test module, after the module's
    `FIRST` notebook (the one that computes the runs the others read) has run at smoke: (notebooks, its provenance)."""
    nbs = Notebooks(tmp_path_factory.mktemp(Path(request.module.__file__).stem))
    first = nbs.run(request.module.FIRST, preset="smoke")
    nbs.first_runs = sorted(p.name for p in (nbs.root / "runs").iterdir())   # for check_pinned_runs
    return nbs, first


PINNED_RUNS = ROOT / "tests" / "pinned_runs.json"
PIN_ENV = "PAPER_REPRO_PIN"   # =write: record the current run names instead of checking them


def check_pinned_runs(notebook: str, runs: list[str]):
    """The run folders (`<kind>-<hash>`) that `notebook` creates at smoke are the ones pinned in tests/pinned_runs.json,
    as open_lth pins its hashnames: a change that alters a run's cache key (its config, its kind, the engine's or an
    algorithm's CACHE_VERSION) fails here, loudly, instead of silently recomputing every cached run. When the change
    is meant, say why in the notebook, rerun the affected references, and rewrite the pins:
    `PAPER_REPRO_PIN=write pytest tests/test_notebooks*.py -k pinned`."""
    pins = json.loads(PINNED_RUNS.read_text()) if PINNED_RUNS.exists() else {}
    if os.environ.get(PIN_ENV) == "write":
        pins[notebook] = runs
        PINNED_RUNS.write_text(json.dumps(dict(sorted(pins.items())), indent=1) + "\n")
        return
    assert notebook in pins, f"no pinned runs for {notebook}: {PIN_ENV}=write records them"
    gone, new = sorted(set(pins[notebook]) - set(runs)), sorted(set(runs) - set(pins[notebook]))
    assert not gone and not new, (f"{notebook}'s run cache keys changed: {len(gone)} pinned runs no longer made, {len(new)} new "
                                  f"(first few: gone {gone[:3]}, new {new[:3]}); if meant, see check_pinned_runs")
