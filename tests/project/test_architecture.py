"""The house with floors: core/ and pages/ import in one direction only, and the old import paths still work.

The floors themselves are import-linter's contracts in pyproject.toml (`make test` runs `lint-imports`
before pytest); these tests read the same import graph (grimp's, every import statement, those inside
functions included) for what the issue that built the floors asked to see proven.
"""

import importlib

import grimp
import pytest

# The floors allowed to know runs: the run floor, its old import path, and the applications on top.
RUN_FLOOR = ("core.runs", "core.jobs")
RUN_USERS = RUN_FLOOR + ("core.lessons", "core.links", "core.cli", "core.export")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("core", "pages", cache_dir=None)


def _within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _cycles(graph) -> list[list[str]]:
    """Every set of two or more modules that import each other, directly or not (Tarjan's algorithm)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in graph.modules}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_modules_of_core_or_pages_import_each_other_in_a_circle(graph):
    assert len(graph.modules) > 80  # the graph really holds the project
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    class Graph:
        modules = {"a", "b", "c", "d"}

        @staticmethod
        def find_modules_directly_imported_by(m):
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}[m]

    assert _cycles(Graph()) == [["a", "b", "c"]]


def test_only_the_run_floor_and_the_applications_import_runs(graph):
    offenders = sorted(
        f"{importer} imports {imported}"
        for importer in graph.modules
        if importer.startswith("core.") and not _within(importer, RUN_USERS)
        for imported in graph.find_modules_directly_imported_by(importer)
        if _within(imported, RUN_FLOOR)
    )
    assert offenders == []


def test_core_never_imports_streamlit_or_the_pages():
    graph = grimp.build_graph("core", "pages", include_external_packages=True, cache_dir=None)
    offenders = sorted(
        f"{importer} imports {imported}"
        for importer in graph.modules if _within(importer, ("core",))
        for imported in graph.find_modules_directly_imported_by(importer)
        if _within(imported, ("streamlit", "pages"))
    )
    assert offenders == []


@pytest.mark.parametrize("old, new", [
    ("core.training.fit", "core.train.fitting.fit"),
    ("core.training.strategy_config", "core.train.strategies.strategy_config"),
    ("core.training.TrainConfig", "core.train.base.TrainConfig"),
    ("core.data.load_zip", "core.data.archives.load_zip"),
    ("core.data.split", "core.data.splits.split"),
    ("core.data.add_images", "core.data.files.add_images"),
    ("core.data.ImageDataset", "core.data.datasets.ImageDataset"),
    ("core.backbones.load", "core.models.backbones.load"),
    ("core.backbones.classifier", "core.models.heads.classifier"),
    ("core.jobs.start_run", "core.runs.jobs.start_run"),
    ("core.runs.RunStore", "core.runs.store.RunStore"),
])
def test_the_old_import_paths_give_the_same_objects_as_their_new_homes(old, new):
    def resolve(dotted):
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)

    assert resolve(old) is resolve(new)


def test_multitask_names_have_one_home():
    from core import models
    from core.models import multitask

    assert models.multitask_classifier is multitask.multitask_classifier
    assert not hasattr(importlib.import_module("core.backbones"), "multitask_classifier")
