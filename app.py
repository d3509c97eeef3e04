"""Transfer Lab: see and teach transfer learning on images. Start with `make run`."""

# Imported here, once, before any page runs: Streamlit and plotly import pandas lazily, and when
# a classroom's first visitors arrive together their script threads raced to import it
# ("partially initialized module 'pandas'").
from pathlib import Path

import pandas  # noqa: F401
import streamlit as st

from core.runs.tasks import get_pool
from pages.ui.links import apply_link, classroom_link_ui, show_link_notes, sync_link
from pages.ui.session import init_session, link_notes, run_page, sidebar

# The app's own icon, served by this server: a ":material/…:" page icon makes the browser fetch
# the favicon from fonts.gstatic.com on every page, which fails offline (classrooms often are).
ICON = Path(__file__).resolve().parent / "assets" / "icon.png"
st.set_page_config(page_title="Transfer Lab", page_icon=str(ICON), layout="wide")
st.logo(str(ICON), size="large")
# A projector's 800 px: the sidebar's 300 px would leave the page 500; narrower, it leaves 600 (and
# its collapse arrow folds it away). Labels of buttons and checkboxes wrap instead of ending in "…"
# in a narrow column. Only a style: nothing of the person's is in it.
st.html("<style>@media (max-width: 900px) { section[data-testid='stSidebar'][data-collapsed='false'] { width: 200px !important; "
        "min-width: 200px !important; max-width: 200px !important; } } "
        "[data-testid=stMain] button [data-testid=stMarkdownContainer] p, "
        "[data-testid=stMain] [data-testid=stCheckbox] [data-testid=stMarkdownContainer] p "
        "{ white-space: normal !important; overflow: visible !important; text-overflow: clip !important; } "
        "[data-testid=stMain] button [data-testid=stMarkdownContainer], "
        "[data-testid=stMain] [data-testid=stCheckbox] [data-testid=stMarkdownContainer] { overflow: visible !important; }"
        "</style>")

init_session()
apply_link()
show_link_notes()
link_notes()
# The warm worker processes that train runs start with the server (once per process), so the
# first click on Train does not wait for torch to be imported.
get_pool()

# The Data page is served at the root; its own name (/data, as every other page has one) leads there too,
# instead of "Page not found". Its inferred path would be "data" too, so it gets another, never shown.
DATA_PAGE = st.Page("pages/data.py", title="Data", icon=":material/photo_library:", default=True, url_path="data-page")
pages = {
    # First in the menu: a class starts from a lesson; a bare visit still opens on the Data page.
    "Learn": [
        st.Page("pages/lessons.py", title="Lessons", icon=":material/school:"),
    ],
    "Build": [
        DATA_PAGE,
        st.Page("pages/model.py", title="Model", icon=":material/account_tree:"),
        st.Page("pages/train.py", title="Train", icon=":material/monitoring:"),
    ],
    "Look inside": [
        st.Page("pages/features.py", title="Feature maps", icon=":material/grid_view:"),
        st.Page("pages/saliency.py", title="Saliency", icon=":material/visibility:"),
        st.Page("pages/microscope.py", title="Microscope", icon=":material/biotech:"),
        st.Page("pages/domain_shift.py", title="Domain shift", icon=":material/swap_horiz:"),
        st.Page("pages/fewshot.py", title="Few-shot", icon=":material/filter_5:"),
    ],
    "Use": [
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
        st.Page("pages/use_model.py", title="Use the model", icon=":material/rocket_launch:"),
        st.Page(lambda: st.switch_page(DATA_PAGE), title="Data", url_path="data", visibility="hidden"),
    ],
}
# config.toml hides the menu for the first paint after a start (it would list pages/ raw files);
# st.navigation draws the real one only while this option is on.
st.set_option("client.showSidebarNavigation", True)
navigation = st.navigation(pages)
sidebar()
link_slot = st.sidebar.container()  # filled after the page: the link carries what the page just set
try:
    run_page(navigation)
finally:  # also after st.stop() / st.rerun() in a page: the address bar follows what the page just set
    sync_link()
    with link_slot:
        classroom_link_ui()
