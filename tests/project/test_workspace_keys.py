"""Pages reach the person's workspace through ``pages.ui.workspace``, never through its session keys.

The workspace keeps its fields in session state under the keys below. A page that wrote one directly
would slip past the locks of a teacher's link; one that read it would bypass the one view of the
workspace every page shares. The scan reads each module's syntax tree, so comments and strings that
merely mention a key do not count, and every way of reaching session state does.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWNER = "pages/ui/workspace.py"  # the one module that keeps these keys
KEYS = {"dataset", "dataset_label", "load_report", "model_choice", "train_config", "current_run"}


def _is_session(node, names: set[str]) -> bool:
    """``st.session_state`` (or any ``x.session_state``), or a name bound to it."""
    return ((isinstance(node, ast.Attribute) and node.attr == "session_state")
            or (isinstance(node, ast.Name) and node.id in names))


def _session_names(tree) -> set[str]:
    """The names a module binds to session state: ``ss = st.session_state``, ``ss, ws = st.session_state, ...``."""
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = ([(target, node.value)] if not isinstance(target, ast.Tuple)
                     else zip(target.elts, node.value.elts, strict=False) if isinstance(node.value, ast.Tuple)
                     else [])
            names.update(t.id for t, value in pairs if isinstance(t, ast.Name) and _is_session(value, set()))
    return names


def _text(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def direct_uses(source: str) -> list[tuple[int, str]]:
    """(line, key) for each read, write or test of a workspace key on session state in ``source``."""
    tree = ast.parse(source)
    names = _session_names(tree)
    found = []
    for node in ast.walk(tree):
        keys = []
        if isinstance(node, ast.Attribute) and _is_session(node.value, names):
            keys = [node.attr]  # ss.dataset, ss.dataset = ..., del ss.dataset
        elif isinstance(node, ast.Subscript) and _is_session(node.value, names):
            keys = [_text(node.slice)]  # ss["dataset"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and _is_session(node.func.value, names)):
            keys = [_text(a) for a in node.args[:1]] + [k.arg for k in node.keywords]  # get, pop, setdefault, update
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) > 1
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and _is_session(node.args[0], names)):
            keys = [_text(node.args[1])]
        elif isinstance(node, ast.Compare) and any(_is_session(c, names) for c in node.comparators):
            keys = [_text(node.left)]  # "dataset" in ss
        found += [(node.lineno, key) for key in keys if key in KEYS]
    return sorted(found)


def test_no_page_reads_or_writes_the_workspaces_session_keys():
    modules = [ROOT / "app.py", *sorted((ROOT / "pages").rglob("*.py"))]
    assert len(modules) > 20  # the scan really sees the pages
    offenders = [f"{path.relative_to(ROOT)}:{line} {key}" for path in modules
                 if path.relative_to(ROOT).as_posix() != OWNER
                 for line, key in direct_uses(path.read_text(encoding="utf-8"))]
    assert offenders == [], "read or change these through pages.ui.workspace.workspace():\n" + "\n".join(offenders)


def test_the_scan_finds_every_way_a_module_reaches_a_key():
    source = '''
import streamlit as st
ss = st.session_state
a = ss.dataset
ss.train_config = None
del ss.load_report
b = st.session_state["current_run"]
c = ss.get("dataset_label")
ss.update(model_choice=None)
d = "dataset" in ss
e = getattr(st.session_state, "train_config")
state, ws = st.session_state, None
f = state.model_choice
g = ss.owner, ss.get("val_fraction"), "split_seed" in ss  # keys the workspace does not keep
h = "current_run"  # a mere mention
'''
    assert [key for _, key in direct_uses(source)] == [
        "dataset", "train_config", "load_report", "current_run", "dataset_label", "model_choice", "dataset",
        "train_config", "model_choice"]


def test_the_workspace_itself_is_where_the_keys_are_kept():
    assert {key for _, key in direct_uses((ROOT / OWNER).read_text(encoding="utf-8"))} == KEYS
