"""The library's structure (bench/structure.py measures it): one direction of imports, lazy ones included; every
module in a layer; no private name imported across modules; registries that are filled where they are defined,
not as a side effect of importing another module."""
import importlib.util
import json
import subprocess
import sys

from conftest import ROOT

spec = importlib.util.spec_from_file_location("structure", ROOT / "bench" / "structure.py")
structure = importlib.util.module_from_spec(spec); spec.loader.exec_module(structure)


def test_the_import_graph_has_no_cycle():
    edges = structure.graph()
    assert {"core", "recipes", "optim", "train", "runs", "tickets", "cli"} <= set(edges)
    assert structure.cycles(edges) == []


def test_cycle_finder_finds_lazy_and_long_cycles():
    "The check can fail: a two-module and a three-module cycle are found, an acyclic graph is not flagged."
    assert structure.cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert structure.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert structure.cycles({"core": set(), "runs": {"core", "train"}, "train": {"core"}}) == []


def test_imports_include_the_lazy_ones(tmp_path):
    "An import inside a function body counts as much as one at the top of the module."
    p = tmp_path / "m.py"
    p.write_text("from .core import a\ndef f():\n    from paper_repro.runs import b\n    from . import train\n")
    assert sorted(m for m, _, _ in structure.imports(p, {"core", "runs", "train"})) == ["core", "runs", "train"]


def test_every_module_sits_in_a_layer_and_imports_only_downwards():
    assert structure.layer_violations(structure.graph()) == []
    assert structure.layer_violations({"core": {"runs"}, "runs": set()}) == [f"core (layer 0) imports runs (layer {structure.RANK['runs']})"]


def test_no_private_name_is_imported_across_modules():
    assert structure.private_imports() == []


def test_named_recipes_in_a_fresh_process_without_the_algorithms():
    """get_recipe knows every paper's recipe in a fresh process that imported no algorithm, and importing all of
    them adds nothing to RECIPES (no registry is filled as a side effect of an import)."""
    code = ("import sys, json; from paper_repro.recipes import RECIPES, get_recipe; r = get_recipe('imp-resnet20'); "
            "alone = sorted(RECIPES); assert not any(m in sys.modules for m in ('paper_repro.imp', 'paper_repro.gem_miner', 'paper_repro.edge_popup')); "
            "import paper_repro.gems, paper_repro.rti, paper_repro.sanity, paper_repro.asni; "
            "print(json.dumps(dict(epochs=r.epochs, alone=alone, after=sorted(RECIPES))))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert out["epochs"] == 160 and out["alone"] == out["after"]
    assert {"cpu", "imp-resnet20", "imp-resnet20-short", "ep-cpu", "gems-finetune-resnet20"} <= set(out["alone"])


def test_structure_report_runs():
    "The report's numbers (the [architecture] issue's targets are printed beside them)."
    r = structure.report()
    assert r["exported_cells"] > 100 and r["functions"] > 400 and r["median_cell_lines"] > 0


def test_plot_looks_are_one_table_that_imports_do_not_change():
    """plots.STYLES is the one table of colours, markers and line styles; importing the paper modules, in any order,
    changes nothing in it (before, four modules `update`d shared dicts at import time)."""
    code = ("import json, copy; from paper_repro import plots; before = copy.deepcopy(plots.STYLES); "
            "import paper_repro.rti, paper_repro.gems, paper_repro.asni, paper_repro.sanity; "
            "print(json.dumps(dict(same=before == plots.STYLES, names=sorted(n for n in vars(plots) if n.isupper()))))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert out["same"] and not {"COLORS", "MARKERS", "LINESTYLES"} & set(out["names"])
