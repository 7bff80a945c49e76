"""Shared pytest setup: the `slow` marker, the repository root, and Fashion-MNIST loaded once per session."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer than a few seconds; `make test` skips them, `make test-slow` runs them")


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
