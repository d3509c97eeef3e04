"""Fixtures shared by the test files: an isolated data folder and torch cache for every test run.

The tests are grouped by floor, as core/ is: tests/basics, data, models, train, analysis, methods, runs,
apps (lessons, links, export, the command line), app_pages (the pages under Streamlit's AppTest),
browser (the app in headless Chromium) and project (the floors themselves, the docs). Toy datasets
and the tiny model that several floors use are in tests/toys.py.
"""

import os

import pytest
import torch

# Keep the tests' torch cache and run folder away from the user's.
os.environ.setdefault("TRANSFER_LAB_TEST", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    yield tmp_path


@pytest.fixture(scope="session")
def lite0():
    """The default backbone, loaded once; tests that change it must copy it first."""
    from core import models

    return models.load()


@pytest.fixture(scope="module")
def pool():
    """One warm worker process per test module: starting one costs seconds (torch's import)."""
    from core.runs.processes import WorkerPool

    workers = WorkerPool(1, threads=1)
    yield workers
    workers.close()


@pytest.fixture
def store(tmp_path):
    """A run store of its own for the test."""
    from core.runs import RunStore

    return RunStore(tmp_path / "data")
