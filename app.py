"""Transfer Lab: see and teach transfer learning on images. Start with `make run`."""

# Imported here, once, before any page runs: Streamlit and plotly import pandas lazily, and when
# a classroom's first visitors arrive together their script threads raced to import it
# ("partially initialized module 'pandas'").
import pandas  # noqa: F401
import streamlit as st

from pages._shared import init_session, sidebar

st.set_page_config(page_title="Transfer Lab", page_icon=":material/biotech:", layout="wide")

init_session()

pages = {
    "Build": [
        st.Page("pages/data.py", title="Data", icon=":material/photo_library:", default=True),
        st.Page("pages/model.py", title="Model", icon=":material/account_tree:"),
        st.Page("pages/train.py", title="Train", icon=":material/monitoring:"),
    ],
    "Look inside": [
        st.Page("pages/features.py", title="Feature maps", icon=":material/grid_view:"),
        st.Page("pages/saliency.py", title="Saliency", icon=":material/visibility:"),
        st.Page("pages/domain_shift.py", title="Domain shift", icon=":material/swap_horiz:"),
        st.Page("pages/fewshot.py", title="Few-shot", icon=":material/filter_5:"),
    ],
    "Use": [
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
        st.Page("pages/use_model.py", title="Use the model", icon=":material/rocket_launch:"),
    ],
}
navigation = st.navigation(pages)
sidebar()
navigation.run()
