"""The Rare Gems comparison sweep: presets against Appendix A.3, exact densities, costs, and run sharing."""
import json
import math

import pandas as pd
import pytest

from paper_repro.core import PRESETS
from paper_repro.gems import (Fig3Spec, GemsSpec, INVERSIONS, METHODS, SANITY, gems_network, gems_sweep, sparse_regime)
from paper_repro.imp import imp_rounds
from paper_repro.masks import keep_count
from paper_repro.runs import runs_root, STATS
from paper_repro.recipes import Recipe, RECIPES

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(densities=(0.5, 0.2), lam=(0.0, 1e-4), seeds=(0,)):
    """One LeNet-300-100 on the digits, one epoch for everything: a grid that trains in seconds."""
    mine = Recipe(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.0, epochs=2, batch_size=128, trains="scores")
    train = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, epochs=1, batch_size=128)
    net = gems_network("lenet-300-100", list(densities), lam=list(lam), period=1, mine_lr=0.5, mine=mine, finetune=train,
                       finetune_lr=0.05, imp=train, rewind=5, short=1, ep=mine.replace(epochs=1), ep_finetune=train,
                       sr_family="resnet", options=dict(init="signed_constant", bias=False))
    return dict(data="digits", networks={"lenet-300-100": net}, models=["lenet-300-100"], seeds=list(seeds))


# --- presets -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, densities", [
    ("resnet20", [0.5, 0.1374, 0.0373, 0.0144, 0.0059]),        # A.3.1
    ("mobilenet-v2", [0.5, 0.2, 0.05, 0.0144]),
    ("vgg16-gems", [0.5, 0.05, 0.025, 0.014, 0.005]),
    ("wrn-28-2", [0.5, 0.2, 0.05, 0.025, 0.014, 0.005]),
])
def test_paper_densities_are_appendix_a31(name, densities):
    assert GemsSpec.TABLE["paper"]["networks"][name]["densities"] == densities


def test_paper_gem_miner_columns_are_tables_8_to_11():
    n = GemsSpec.TABLE["paper"]["networks"]
    assert n["resnet20"]["gm"]["lam"] == [1e-8, 1e-5, 3e-5, 1e-4, 1e-4]          # Table 8
    assert n["resnet20"]["gm"]["period"] == [8, 5, 5, 5, 5]
    assert n["mobilenet-v2"]["gm"]["lam"] == [0.0, 3e-6, 7e-6, 1e-4]             # Table 9
    assert n["mobilenet-v2"]["gm"]["lr"] == [0.05, 0.1, 0.1, 0.1]
    assert set(n["vgg16-gems"]["gm"]["lam"]) == {1e-6} and n["vgg16-gems"]["gm"]["mine"].optimizer == "adam"   # Table 10
    assert n["vgg16-gems"]["gm"]["mine"].lr == 0.01
    w = n["wrn-28-2"]["gm"]                                                       # Table 11 (+ 20%, see the notebook)
    assert (w["period"], w["lr"], w["lam"]) == ([5] + [10]*5, [0.1] + [0.5]*5, [0.0] + [1e-5]*5)
    for net in n.values():
        assert net["gm"]["mine"].weight_decay == 0.0 and net["gm"]["mine"].batch_size == 128
        assert net["gm"]["events"] == "paper"


def test_paper_finetuning_is_table_15_and_imp_is_section_4():
    n = GemsSpec.TABLE["paper"]["networks"]
    expect = {"resnet20": (150, [80, 120], [0.1] + [0.01]*4), "mobilenet-v2": (300, [150, 250], [0.1]*4),
              "vgg16-gems": (200, [100, 150], [0.05]*5), "wrn-28-2": (150, [80, 120], [0.1] + [0.01]*5)}
    for name, (E, ms, lrs) in expect.items():
        f = n[name]["finetune"]
        assert (f["recipe"].epochs, list(f["recipe"].milestones), f["lr"]) == (E, ms, lrs)
        assert (f["recipe"].momentum, f["recipe"].weight_decay, f["recipe"].batch_size) == (0.9, 1e-4, 128)
        assert n[name]["gm"]["mine"].epochs == E                              # "the same number of epochs"
        assert n[name]["imp"]["rewind"] > 0                                      # Figure 4's IMP is warm
    r20 = n["resnet20"]["imp"]
    assert imp_rounds(min(n["resnet20"]["densities"])) * r20["recipe"].epochs == 24 * 160 == 3840   # section 1
    assert r20["recipe"] == RECIPES["imp-resnet20"] and r20["short"] == 8                     # section 4.3


def test_cpu_preset_spans_50_to_half_a_percent_with_one_seed():
    c = GemsSpec.TABLE["cpu"]
    assert c["data"] == "fashion-mnist" and c["seeds"] == [0] and c["models"] == ["lenet-300-100", "small-cnn"]
    for net in c["networks"].values():
        assert net["densities"][0] == 0.5 and net["densities"][-1] <= 0.005


def test_every_figure_preset_focuses_on_a_point_of_its_grid():
    for f in GemsSpec.FIGURES:
        for p in PRESETS:
            cfg = GemsSpec.fill(f, p)                                   # its check: the focus is a point of the grid
            if cfg.network is not None:
                name, d = cfg.focus()
                assert name in cfg.networks and (d is None or d in cfg.networks[name]["densities"])
    with pytest.raises(ValueError, match="network='resnet20'"):
        GemsSpec.fill("fig7", "cpu", network="resnet20")
    with pytest.raises(ValueError, match=r"density=0.3: lenet-300-100's densities in this preset are \[0.5, 0.2\]"):
        GemsSpec.fill("fig1", "smoke", density=0.3)


def test_spec_types_its_knobs_and_states_the_rules():
    """Papermill's and the command line's values become the fields' types; every rule names the knob and the value."""
    s = GemsSpec.fill("fig4", "smoke", seeds="[0, 1]", models="small-cnn", inversion="post-hoc")
    assert (s.seeds, s.models, s.inversion, s.preset, s.figure) == ([0, 1], ["small-cnn"], "post-hoc", "smoke", "fig4")
    assert GemsSpec.fill("fig1", "smoke").replace(density=0.5, network="small-cnn").focus() == ("small-cnn", 0.5)
    assert dict(GemsSpec.fill("fig2", "cpu"))["networks"] == GemsSpec.TABLE["cpu"]["networks"]   # reads like a Mapping
    for figure, kw, words in [
            ("fig2", dict(models=["lenet-300-100", "vgg16"]), r"models=\['lenet-300-100', 'vgg16'\]: this preset has 'lenet-300-100', 'small-cnn'"),
            ("fig2", dict(seeds=[0, -2]), r"seeds=\[0, -2\]: use one or more integers >= 0"),
            ("fig2", dict(seeds=True), r"seeds=True"),
            ("fig4", dict(inversion="after"), r"inversion='after': use one of 'mining', 'post-hoc'"),
            ("fig2", dict(inversion="mining"), r"unknown parameter\(s\) \['inversion'\]"),     # fig4's knob alone
            ("fig8", dict(density=0.2), r"unknown parameter\(s\) \['density'\]"),
            ("fig6", dict(network="lenet"), r"network='lenet': this preset has 'lenet-300-100', 'small-cnn'")]:
        with pytest.raises(ValueError, match=words):
            GemsSpec.fill(figure, "smoke", **kw)
    with pytest.raises(ValueError, match="figure='fig2' looks at no single network"):
        GemsSpec.fill("fig2", "smoke").focus()
    with pytest.raises(ValueError, match="density=0.2: give the network"):
        GemsSpec.fill("fig2", "smoke").replace(density=0.2)
    with pytest.raises(Exception):
        GemsSpec.fill("fig2", "smoke").seeds = [3]                       # frozen


def test_fig3_spec_is_table_9_and_its_recipes_are_recipes():
    p = Fig3Spec.fill("fig3", "paper")
    assert (p.model, p.data, p.period, p.lams, p.mine_lrs) == ("mobilenet-v2", "cifar10", 5, [0.0, 3e-6, 7e-6, 1.5e-5], [0.05, 0.1, 0.1, 0.1])
    assert (p.mine.epochs, p.mine.schedule, p.mine.weight_decay, p.mine.trains) == (300, "cosine", 0.0, "scores")
    assert p.finetune == RECIPES["gems-finetune-mobilenet-v2"]
    assert p.no_target_lams == [7e-6, 1.5e-5]                              # "becomes 2.5% and 1.4%"
    for preset in PRESETS:
        c = Fig3Spec.fill("fig3", preset)
        assert all(isinstance(c[k], Recipe) for k in ("mine", "finetune", "ep"))
        assert len(c.lams) == len(c.targets)
        # GEM-MINER(λ) by itself for several λ (section 3's "larger λ, sparser output"): λ = 0 and no_target_lams
        assert dict(zip(c.lams, c.targets))[0.0] is None and len(c.no_target_lams) >= 1 and 0.0 not in c.no_target_lams
    one = Fig3Spec.fill("fig3", "smoke", lam=1.5e-5, density=0.014, seed=2)
    assert (one.lam, one.density, one.seed) == (1.5e-5, 0.014, 2)
    for kw, words in [(dict(seed=-1), "seed=-1"), (dict(lam=-1e-5), "lam=-1e-05"), (dict(density=0.0), "density=0.0"),
                      (dict(lams=[0.0]), r"targets=\[None, 0.05\]: give one per λ of lams=\[0.0\]"), (dict(lamb=1), "lamb")]:
        with pytest.raises(ValueError, match=words):
            Fig3Spec.fill("fig3", "smoke", **kw)


def test_gems_network_rejects_bad_lists():
    t = RECIPES["cpu"]
    with pytest.raises(ValueError, match=r"period=\[1, 2, 3\]"):
        gems_network("lenet-300-100", [0.5, 0.1], 0, [1, 2, 3], 0.1, t, t, 0.1, t, 0, 1, t, t, "resnet")
    with pytest.raises(ValueError, match="dense to sparse"):
        gems_network("lenet-300-100", [0.5, 1.5], 0, 1, 0.1, t, t, 0.1, t, 0, 1, t, t, "resnet")


def test_sparse_regime():
    assert sparse_regime([0.5, 0.0144, 0.0059]) == [0.0144, 0.0059]
    assert sparse_regime([0.5, 0.05]) == [0.05]


# --- the sweep -----------------------------------------------------------------------------------------------------

MADE = {}   # the run folders the module's grid made

@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    import os
    old = os.environ.get("PAPER_REPRO_OUTPUTS")
    os.environ["PAPER_REPRO_OUTPUTS"] = str(tmp_path_factory.mktemp("gems"))
    cfg = tiny(seeds=(0, 1))
    sweep = gems_sweep(cfg, methods=METHODS, progress=False)
    MADE["grid"] = sorted(p.name for p in runs_root().iterdir())
    yield cfg, sweep
    if old is None: os.environ.pop("PAPER_REPRO_OUTPUTS")
    else: os.environ["PAPER_REPRO_OUTPUTS"] = old


def test_sweep_rows_are_the_grid(grid):
    cfg, sweep = grid
    s = sweep.summary
    assert len(s) == 2 * 2 * (len(METHODS) - 1 + len(SANITY))        # seeds × densities × methods
    assert set(s.seed) == {0, 1} and set(s.target) == {0.5, 0.2}
    assert sweep.dense.seed.tolist() == [0, 1]
    r = sweep.results()
    assert set(r.metric) == {"pre_finetune_acc", "post_finetune_acc", "epochs", "time_s"}
    assert len(r) == 4 * len(s)


def test_every_method_keeps_its_density(grid):
    _, sweep = grid
    N = 64 * 300 + 300 * 100 + 100 * 10
    for row in sweep.summary.itertuples():
        kept = round(row.density * N)
        if row.method.startswith("IMP"): assert kept == keep_count(N, row.target), row
        elif row.method == "SR": assert abs(kept - keep_count(N, row.target)) <= 2, row
        elif row.method == "EP":
            L = sweep.layers.query("method == 'EP' and target == @row.target and seed == @row.seed")
            assert L.kept.tolist() == [keep_count(n, row.target) for n in L["size"]]
        else: assert kept <= keep_count(N, row.target), row


def test_costs_follow_the_protocol(grid):
    cfg, sweep = grid
    s = sweep.summary.set_index(["method", "target", "seed"])
    assert s.loc[("GM", 0.2, 0), "epochs"] == 2 + 1                         # mining + finetuning
    assert s.loc[("IMP", 0.2, 0), "epochs"] == (imp_rounds(0.2) + 1) * 1   # R rounds + the ticket
    assert s.loc[("IMP short-cold", 0.2, 0), "rounds"] == imp_rounds(0.2)
    assert s.loc[("EP", 0.5, 1), "epochs"] == 1 + 1 and s.loc[("SR", 0.5, 1), "epochs"] == 1
    assert (sweep.summary.time_s > 0).all()


def test_seeds_change_the_runs(grid):
    _, sweep = grid
    a, b = (sweep.summary[sweep.summary.seed == k].set_index(["method", "target"]).key for k in (0, 1))
    assert (a != b.loc[a.index]).all()


def test_a_cold_sweep_computes_each_run_once(grid):
    """The cold grid computed every run of its cache exactly once (none twice, none left to a second pass). It also
    loads some: with two densities the IMP tickets at 50% read their chain's rounds, which the chain to 20% made."""
    _, sweep = grid
    assert sweep.cache["computed"] == len(MADE["grid"]) and all(not n.endswith(".partial") for n in MADE["grid"])


def test_a_cold_sweep_loads_none_of_its_own_runs(tmp_outputs):
    """One density, Figure 4's methods: no unit needs another's run, so a cold sweep loads nothing (each unit returns
    its tables; nothing reads them back) and computes each run once; a second call loads them all and computes
    nothing, with the same tables."""
    cfg = tiny(densities=(0.2,), lam=(1e-4,))
    cold = gems_sweep(cfg, progress=False)
    made = len(list(runs_root().iterdir()))
    assert cold.cache == dict(loaded=0, computed=made), (cold.cache, made)
    warm = gems_sweep(cfg, progress=False)
    assert warm.cache == dict(loaded=made, computed=0), (warm.cache, made)
    for t in ("summary", "layers", "curves", "dense"):
        pd.testing.assert_frame_equal(getattr(warm, t), getattr(cold, t))
    assert list(cold.summary.method) == ["GM", "GM shuffle", "GM reinit", "GM invert", "IMP", "EP", "SR"]


def test_the_tables_keep_the_grid_order(grid):
    """Point by point (network, seed, density in the grid's order), and at each point GM, the sanity checks, IMP's
    variants in the order asked for, EP, SR, whatever order the units ran in; the dense row once per seed."""
    cfg, sweep = grid
    order = ["GM", "GM shuffle", "GM reinit", "GM invert", "IMP", "IMP short-cold", "IMP short-warm", "IMP long-cold", "EP", "SR"]
    expect = [(s, d, m) for s in (0, 1) for d in (0.5, 0.2) for m in order]
    assert list(zip(sweep.summary.seed, sweep.summary.target, sweep.summary.method)) == expect
    layers = sweep.layers.drop_duplicates(["seed", "target", "method"])
    assert list(zip(layers.seed, layers.target, layers.method)) == expect
    curves = sweep.curves.drop_duplicates(["seed", "target", "method", "phase"])
    assert list(zip(curves.seed, curves.method, curves.phase)) == [
        (s, m, ph) for s in (0, 1) for d in (0.5, 0.2)
        for m, ph in [("GM", "mining"), ("GM", "finetune"), ("IMP", "ticket")] + ([("dense", "dense")] if d == 0.5 else [])]
    swapped = gems_sweep(cfg, methods=["SR", "IMP long-cold", "IMP"], models="lenet-300-100", seeds=0, progress=False)
    assert list(swapped.summary.method) == ["IMP long-cold", "IMP", "SR"] * 2 and swapped.cache["computed"] == 0


def test_a_second_sweep_loads_everything(grid):
    cfg, sweep = grid
    again = gems_sweep(cfg, methods=METHODS, progress=False)
    assert again.cache["computed"] == 0 and again.cache["loaded"] > 0
    pd.testing.assert_frame_equal(again.summary, sweep.summary)


def test_changing_one_lambda_recomputes_only_that_gem_miner(grid):
    """λ of the 20% point changes: its GM mining, GM finetuning, the inverted mining, and the three sanity finetunes
    (6 runs per seed) are new; IMP, EP, SR and the 50% point load."""
    cfg, _ = grid
    other = tiny(lam=(0.0, 3e-4), seeds=(0,))
    sweep = gems_sweep(other, methods=("GM", "IMP", "EP", "SR", "sanity"), progress=False)
    assert sweep.cache["computed"] == 6, sweep.cache


def _gem_miner_configs() -> list[dict]:
    return [json.loads(f.read_text())["config"] for f in runs_root().glob("gem_miner-*/config.json")]


def test_score_inversion_is_a_mining_run_at_the_same_settings(grid):
    """Figure 4's `GM invert` (default inversion="mining") is its own cached GEM-MINER run: GM's configuration with
    invert=True (freezing keeps the lowest scores) and unflag=True (the mask is q); its cost counts that mining."""
    cfg, sweep = grid
    s = sweep.summary
    inv = s[s.method == "GM invert"]
    assert set(inv.inversion) == {"mining"} and set(inv.epochs) == {2 + 1}          # mining + finetuning
    assert set(s[s.method.isin(["GM shuffle", "GM reinit"])].epochs) == {1}         # the others only finetune
    configs = _gem_miner_configs()
    mined = [c for c in configs if c["invert"]]
    plain = [c for c in configs if not c["invert"]]
    assert len(mined) >= 2 * 2 and all(c["unflag"] for c in mined)                 # seeds × densities
    same = lambda c: {k: v for k, v in c.items() if k not in ("invert", "unflag")}
    for c in mined: assert same(c) in [same(x) for x in plain]                      # GM's very settings
    N = 64 * 300 + 300 * 100 + 100 * 10
    gm = s[s.method == "GM"].set_index(["target", "seed"]).density
    for r in inv.itertuples():                                                      # q: the target's count, >= GM's
        assert gm.loc[(r.target, r.seed)] * N - 0.5 <= r.density * N <= keep_count(N, r.target)


def test_post_hoc_inversion_is_the_named_option(grid):
    """inversion="post-hoc" inverts GM's final scores after mining (`sanity_check(gm, "invert")`): only the four
    `GM invert` finetunings are new; its masks keep GM's count; bad values name the two."""
    cfg, sweep = grid
    post = gems_sweep(cfg, methods=("GM", "sanity"), inversion="post-hoc", progress=False)
    assert post.cache["computed"] == 4, post.cache
    a = sweep.summary.query("method == 'GM invert'").set_index(["target", "seed"])
    b = post.summary.query("method == 'GM invert'").set_index(["target", "seed"])
    assert set(b.inversion) == {"post-hoc"} and set(b.epochs) == {1} and (a.key != b.key.loc[a.index]).all()
    gm = sweep.summary.query("method == 'GM'").set_index(["target", "seed"]).density
    assert (b.density - gm.loc[b.index]).abs().max() < 1e-12
    same = lambda x: (x.summary[x.summary.method.isin(["GM", "GM shuffle", "GM reinit"])]
                      .set_index(["method", "target", "seed"])[["key", "post_finetune_acc"]].sort_index())
    pd.testing.assert_frame_equal(same(post), same(sweep))                          # the other rows are the same runs
    assert INVERSIONS == ("mining", "post-hoc")
    with pytest.raises(ValueError, match=r"inversion='after': use one of 'mining', 'post-hoc'"):
        gems_sweep(cfg, inversion="after")


def test_bad_arguments_name_what_is_allowed(grid):
    cfg, _ = grid
    with pytest.raises(ValueError, match=r"methods=\['IMP warm'\]"):
        gems_sweep(cfg, methods=["IMP warm"])
    with pytest.raises(ValueError, match=r"densities=\[0.1\].*\[0.5, 0.2\]"):
        gems_sweep(cfg, densities=0.1)
    with pytest.raises(ValueError, match="models=\\['vgg16'\\]"):
        gems_sweep(cfg, models="vgg16")
