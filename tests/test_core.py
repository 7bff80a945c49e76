"""paper_repro.core: directories, device choice, seeding, presets, parameters, provenance, timing."""
import os
import random
import subprocess

import numpy as np
import pytest
import torch

from paper_repro import core
from paper_repro.core import (DeviceUnavailableError, experiment_dir, fill_preset, get_device, provenance,
                              resolve_preset, seed_everything, watch_parameters)


def test_dirs_default_to_checkout_and_follow_env(root, monkeypatch, tmp_path):
    monkeypatch.delenv("PAPER_REPRO_DATA", raising=False)
    monkeypatch.delenv("PAPER_REPRO_OUTPUTS", raising=False)
    assert core.repo_root() == root
    assert core.data_dir() == root / "data" and core.outputs_dir() == root / "outputs"
    monkeypatch.setenv("PAPER_REPRO_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("PAPER_REPRO_OUTPUTS", str(tmp_path / "o"))
    assert core.data_dir() == tmp_path / "d"
    assert experiment_dir("fig3", "smoke") == tmp_path / "o" / "smoke" / "fig3"
    assert experiment_dir("fig3", "cpu").is_dir()


def test_repo_root_from_elsewhere_is_still_the_package_checkout(root, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert core.repo_root() == root  # found from the package location, not the working directory


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu", "cpu:0:1"])
def test_bad_device_strings_name_the_value_and_the_allowed(bad):
    with pytest.raises(ValueError) as e:
        get_device(bad)
    assert repr(bad) in str(e.value) and "'cuda'" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_unavailable_cuda_is_an_error_not_a_fallback(monkeypatch):
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        get_device("cuda")
    monkeypatch.setenv("PAPER_REPRO_DEVICE", "cuda:1")
    with pytest.raises(DeviceUnavailableError, match=r"\$PAPER_REPRO_DEVICE='cuda:1'"):
        get_device()


def test_device_env_and_argument_precedence(monkeypatch):
    monkeypatch.setenv("PAPER_REPRO_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    assert get_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.delenv("PAPER_REPRO_DEVICE")
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        return random.random(), float(np.random.rand()), torch.randn(3).tolist()
    seed_everything(123); a = draw()
    seed_everything(123); b = draw()
    seed_everything(124); c = draw()
    assert a == b and a != c
    for bad in (-1, 2**32, 1.0, True, "1"):
        with pytest.raises(ValueError, match="seed="):
            seed_everything(bad)


@pytest.mark.parametrize("env,expected", [
    ({"IN_TEST": "1"}, "smoke"),
    ({"IN_TEST": "1", "PAPER_REPRO_PRESET": "paper"}, "smoke"),  # a test run never starts a paper-sized job
    ({"PAPER_REPRO_PRESET": "smoke"}, "smoke"),
    ({"PAPER_REPRO_PRESET": "cpu"}, "cpu"),
    ({}, "paper" if torch.cuda.is_available() else "cpu"),
])
def test_auto_preset_resolution(monkeypatch, env, expected):
    for k in ("IN_TEST", "PAPER_REPRO_PRESET", "PAPER_REPRO_DEVICE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert resolve_preset("auto") == expected
    assert resolve_preset("paper") == "paper"  # explicit presets are never overridden


def test_auto_preset_follows_a_forced_cpu_device(monkeypatch):
    for k in ("IN_TEST", "PAPER_REPRO_PRESET"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PAPER_REPRO_DEVICE", "cpu")
    assert resolve_preset() == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "Smoke", "", None, "full"])
def test_bad_preset_lists_the_allowed(bad):
    with pytest.raises(ValueError) as e:
        resolve_preset(bad)
    assert repr(bad) in str(e.value) and "auto, smoke, cpu, paper" in str(e.value)


def test_bad_preset_env(monkeypatch):
    monkeypatch.delenv("IN_TEST", raising=False)
    monkeypatch.setenv("PAPER_REPRO_PRESET", "fast")
    with pytest.raises(ValueError, match=r"\$PAPER_REPRO_PRESET='fast'"):
        resolve_preset()


def test_fill_preset_and_watch_parameters_catch_typos():
    table = {"smoke": dict(lam=0.0, epochs=1), "cpu": dict(lam=1e-5, epochs=10), "paper": dict(lam=1e-5, epochs=160)}
    ns = {}
    params = watch_parameters(ns)
    ns.update(preset="paper", lam=1.5e-5, epochs=None)          # the parameters cell, then papermill's -p lam 1.5e-5
    assert fill_preset(table, **params.given()) == dict(preset="paper", executor="serial", workers=None, lam=1.5e-5, epochs=160)
    ns["lamda"] = 2e-5                                          # papermill -p lamda 2e-5
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lamda'\]; this notebook's parameters are \['epochs', 'executor', 'lam', 'workers'\]"):
        fill_preset(table, **params.given())
    del ns["lamda"]; ns["executor"] = "dask"                    # papermill -p executor dask
    with pytest.raises(ValueError, match=r"executor='dask' is not known; use one of 'serial', 'pool', 'submitit', 'ray'"):
        fill_preset(table, **params.given())


def test_provenance_records_the_commit_and_environment(root):
    p = provenance(preset="cpu", seeds=[0, 1])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode == 0:
        assert p["git_commit"] == head.stdout.strip()
        assert isinstance(p["git_dirty"], bool)
    assert p["torch"] == torch.__version__ and p["device"] == str(get_device())
    assert p["preset"] == "cpu" and p["seeds"] == [0, 1] and p["start_time"].endswith("+00:00")


def test_interleaved_alternates_and_summarises():
    calls = []
    t = core.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5 and list(t.name) == ["a", "b"] * 3
    s = core.timing_summary(t, baseline="a")
    assert s.loc["a", "speedup_vs_a"] == 1.0 and list(s["repeats"]) == [3, 3]
    with pytest.raises(ValueError, match="baseline='c'"):
        core.timing_summary(t, baseline="c")
