"""The library's structure, measured: its import graph (every `import`/`from` in paper_repro/*.py, the lazy ones inside
functions too), the layer each module sits in, private names imported across modules, and the literate rhythm of the
notebooks (lines per exported cell, lines per function).

    python bench/structure.py          # the report
    python bench/structure.py --json   # the numbers, for tests/test_structure.py

The layers, lowest first; a module may import only from its own layer or a lower one, and the graph has no cycle:

    core -> data, models, plots -> masks -> recipes -> optim -> stack -> train -> runs -> tickets
         -> algorithms (baselines, edge_popup, gem_miner, connectivity; then imp, which builds on baselines)
         -> paper modules (asni, rti, sanity; then gems, which builds on sanity) -> cli
"""
from __future__ import annotations

import ast
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG, NBS = ROOT / "paper_repro", ROOT / "nbs"
GENERATED = {"__init__", "_modidx"}
LAYERS = [["core"], ["data", "models", "plots"], ["masks"], ["recipes"], ["optim"], ["stack"], ["train"], ["runs"], ["tickets"],
          ["baselines", "edge_popup", "gem_miner", "connectivity"], ["imp"], ["asni", "rti", "sanity"], ["gems"], ["cli"]]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
CELL_LIMIT, FUNCTION_LIMIT = 12, 50   # the [architecture] issue's targets: median exported cell, longest function


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PKG.glob("*.py")) if p.stem not in GENERATED}


def imports(path: Path, known) -> list[tuple[str, list[str], int]]:
    "(module imported, names taken from it, line) for every import of a library module in `path`, at any depth."
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            parts = ((n.module or "").split(".") if n.level == 1 else
                     (n.module or "").split(".")[1:] if (n.module or "").split(".")[0] == "paper_repro" else None)
            if parts is None: continue
            if parts and parts[0]: out.append((parts[0], [a.name for a in n.names], n.lineno))
            else: out += [(a.name, [], n.lineno) for a in n.names if a.name in known]   # from . import runs
        elif isinstance(n, ast.Import):
            out += [(a.name.split(".")[1], [], n.lineno) for a in n.names if a.name.startswith("paper_repro.")]
    return [(m, names, line) for m, names, line in out if m in known]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {d for d, _, _ in imports(p, mods) if d != m} for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    "The strongly connected components with more than one module (Tarjan), plus any module importing itself."
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in sorted(edges):
        if v not in index: visit(v)
    return out


def layer_violations(edges) -> list[str]:
    unplaced = sorted(m for m in edges if m not in RANK)
    bad = [f"{m} is in no layer (add it to LAYERS)" for m in unplaced]
    bad += [f"{m} (layer {RANK[m]}) imports {d} (layer {RANK[d]})" for m in sorted(edges) if m in RANK
            for d in sorted(edges[m]) if d in RANK and RANK[d] > RANK[m]]
    return bad


def private_imports() -> list[str]:
    "`from paper_repro.x import _name` in one library module of another's private name."
    mods = modules()
    return [f"{m}:{line} imports {n} from {d}" for m, p in mods.items() for d, names, line in imports(p, mods)
            if d != m for n in names if n.startswith("_")]


def _source_lines(cell) -> list[str]:
    return "".join(cell["source"]).splitlines()


def exported_cells() -> list[tuple[str, int]]:
    "(notebook, non-blank lines without the directive) for every exported code cell of the library notebooks."
    out = []
    for nb in sorted(NBS.glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        if not any(c["cell_type"] == "code" and "#| default_exp" in "".join(c["source"]) for c in cells): continue
        for c in cells:
            lines = _source_lines(c)
            if c["cell_type"] != "code" or not lines or not lines[0].replace(" ", "").startswith("#|export"): continue
            body = [l for l in lines[1:] if l.strip() and not l.lstrip().startswith("#|")]
            if not body or all(l.startswith(("import ", "from ")) or l.strip() in ("", ")") for l in body): continue   # the imports cell
            out.append((nb.name, len(body)))
    return out


def functions() -> list[tuple[str, int]]:
    "(module.function, lines) for every function and method of the library, nested ones included."
    out = []
    for m, p in modules().items():
        tree = ast.parse(p.read_text())
        def walk(node, prefix):
            for n in ast.iter_child_nodes(node):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((f"{m}.{prefix}{n.name}", n.end_lineno - n.lineno + 1)); walk(n, f"{prefix}{n.name}.")
                elif isinstance(n, ast.ClassDef): walk(n, f"{prefix}{n.name}.")
        walk(tree, "")
    return out


def report() -> dict:
    edges = graph()
    cells, funcs = exported_cells(), functions()
    long = sorted(((n, k) for n, k in funcs if k > FUNCTION_LIMIT), key=lambda t: -t[1])
    return dict(modules=len(edges), import_edges=sum(map(len, edges.values())), cycles=cycles(edges),
                layer_violations=layer_violations(edges), private_imports=private_imports(),
                exported_cells=len(cells), median_cell_lines=statistics.median(k for _, k in cells),
                cells_over_limit=sum(k > CELL_LIMIT for _, k in cells), functions=len(funcs),
                functions_over_limit=long, longest_function=max(funcs, key=lambda t: t[1]))


if __name__ == "__main__":
    r = report()
    if "--json" in sys.argv: print(json.dumps(r, indent=1)); sys.exit()
    print(f"{r['modules']} modules, {r['import_edges']} import edges (lazy imports included)")
    print(f"import cycles: {len(r['cycles'])} {r['cycles'] or ''}")
    print(f"layer violations: {len(r['layer_violations'])}" + "".join(f"\n  {v}" for v in r["layer_violations"]))
    print(f"private names imported across modules: {len(r['private_imports'])}" + "".join(f"\n  {v}" for v in r["private_imports"]))
    print(f"exported cells: {r['exported_cells']}, median {r['median_cell_lines']} non-blank lines (target <= {CELL_LIMIT}); "
          f"{r['cells_over_limit']} over {CELL_LIMIT}")
    print(f"functions: {r['functions']}, {len(r['functions_over_limit'])} over {FUNCTION_LIMIT} lines (target 0); longest "
          f"{r['longest_function'][0]} ({r['longest_function'][1]})" + "".join(f"\n  {n}: {k}" for n, k in r["functions_over_limit"]))
