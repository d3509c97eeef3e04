"""Fixtures shared by the test files: an isolated data folder and torch cache for every test run.

The tests are grouped by floor, as core/ is: tests/basics, data, models, train, analysis, methods, runs,
apps (lessons, links, export, the command line), app_pages (the pages under Streamlit's AppTest),
browser (the app in headless Chromium) and project (the floors themselves, the docs). Toy datasets
and the tiny model that several floors use are in tests/toys.py.

pytest.ini runs the tests in two pytest-xdist workers, a test module at a time, the slowest floors
first. Most browser tests go to one worker as one unit (each module starts a server and Chromium; two
of those at once on two cores only slow each other), while the other worker starts with the longest
browser module and then both share the rest.
"""

import os

import pytest
import torch

# Keep the tests' torch cache and run folder away from the user's.
os.environ.setdefault("TRANSFER_LAB_TEST", "1")
# Two pytest workers share the machine: one torch thread each (two when pytest runs alone).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))
BROWSER = "tests/browser/"
# The data-page browser tests (projector sizes, webcam) are the longest browser module: a unit of their own
# that the second worker starts with while the first runs the other browser tests.
BROWSER_ALONE = (BROWSER + "test_browser_data.py",)
# Floors in the order their tests are handed out, the slowest first, so the two workers end together.
FLOOR_ORDER = ["browser", "app_pages", "apps", "runs", "train", "methods", "analysis", "data", "models", "basics",
               "project"]


def _rank(nodeid: str) -> tuple[int, int]:
    floor = nodeid.split("/")[1] if nodeid.count("/") >= 2 else ""
    return (FLOOR_ORDER.index(floor) if floor in FLOOR_ORDER else len(FLOOR_ORDER), nodeid.startswith(BROWSER_ALONE))


def pytest_collection_modifyitems(items):
    """Tests in FLOOR_ORDER (pytest.ini keeps xdist to this order with --no-loadscope-reorder); a stable
    sort, so each module's tests keep their order."""
    items.sort(key=lambda item: _rank(item.nodeid))


def pytest_xdist_make_scheduler(config, log):
    """Test modules as units of work (they share module fixtures: worker pools, servers, models), except
    the browser tests outside BROWSER_ALONE: one unit, so one worker runs them one after another."""
    from xdist.scheduler import LoadScopeScheduling

    class BrowserTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(BROWSER) and not nodeid.startswith(BROWSER_ALONE):
                return BROWSER
            return super()._split_scope(nodeid)

    return BrowserTogether(config, log)


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


@pytest.fixture(scope="module")
def small_domains():
    """The demo source (split 3:1 into train and validation) and target at 32 px, three images a class:
    a DAN step or a plain-vs-DAN comparison trains on them in seconds."""
    from core import data

    source = data.demo_dataset("source", per_class=3, size=32)
    target = data.demo_dataset("target", per_class=3, size=32)
    train, val = data.split(source, 0.25, 0)
    return train, val, target


@pytest.fixture
def store(tmp_path):
    """A run store of its own for the test."""
    from core.runs import RunStore

    return RunStore(tmp_path / "data")
