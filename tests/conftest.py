"""Shared pytest setup: the `slow` marker, the repository root, and Fashion-MNIST loaded once per session."""
from pathlib import Path

import pytest

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
