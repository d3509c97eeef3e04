"""Data: pick the demo set or bring images (a ZIP of class folders, single files, the webcam)."""

import plotly.graph_objects as go
import streamlit as st

from core import data
from core.errors import UserInputError
from pages._links import hidden, locked
from pages._shared import bootstrap, DEMO_LABEL, demo, category_axes, plain

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Data")
st.write("Pick the built-in demo set or bring your own images, one class per folder.")


def use_dataset(ds, label: str, report=None) -> None:
    ss.dataset, ss.dataset_label, ss.load_report = ds, label, report


def demo_ui() -> None:
    col1, col2 = st.columns(2)
    look = col1.radio("Look", ["source", "target"], horizontal=True,
                      help="The same shape classes drawn in two styles: a domain shift.")
    per_class = col2.slider("Images per class", 5, 60, 20, step=5)
    if st.button("Use the demo set", type="primary"):
        use_dataset(demo(look, per_class), f"{DEMO_LABEL} ({look} look)")
        st.rerun()


def zip_ui() -> None:
    upload = st.file_uploader("A ZIP with one folder per class (e.g. cats/…, dogs/…)", type=["zip"])
    if upload is not None and st.button("Load this ZIP", type="primary"):
        try:
            ds, report = data.load_zip(upload.getvalue())
        except UserInputError as exc:
            st.error(f"{plain(upload.name)}: {plain(exc)} Your current dataset is unchanged.")
            return
        use_dataset(ds, upload.name, report)
        st.rerun()


def add_images_ui(files, class_name: str) -> None:
    try:
        images, report = data.load_images(files, class_name)
        if not images:
            raise UserInputError("None of these files could be used as an image.")
        ds = ss.dataset.with_images(images, class_name)
    except UserInputError as exc:
        st.error(f"{plain(exc)} Your current dataset is unchanged.")
        return
    label = ss.dataset_label if ss.dataset_label.endswith("+ your images") else f"{ss.dataset_label} + your images"
    use_dataset(ds, label, report)
    st.rerun()


def files_ui() -> None:
    class_name = st.text_input("Class name", placeholder="e.g. mug", key="files_class").strip()
    files = st.file_uploader("Images", type=sorted(data.IMAGE_EXTENSIONS), accept_multiple_files=True)
    if files and st.button("Add to class", type="primary", disabled=not class_name):
        add_images_ui([(f.name, f.getvalue()) for f in files], class_name)


def webcam_ui() -> None:
    class_name = st.text_input("Class name", placeholder="e.g. thumbs up", key="cam_class").strip()
    shot = st.camera_input("Take a picture", disabled=not class_name)
    if shot is not None and st.button("Add this shot", type="primary", disabled=not class_name):
        n = ss.dataset.counts().get(class_name, 0)
        add_images_ui([(f"webcam-{n + 1}.jpg", shot.getvalue())], class_name)


sources = {"Demo set": demo_ui, "ZIP of class folders": zip_ui, "Single images": files_ui, "Webcam": webcam_ui}
if hidden("uploads"):
    sources = {"Demo set": demo_ui}
if locked("data"):
    st.caption("Your teacher's link fixed the dataset for this class.")
else:
    with st.container(border=True):
        choice = st.radio("Bring images from", list(sources), horizontal=True) if len(sources) > 1 else "Demo set"
        sources[choice]()

ds = ss.dataset
report = ss.get("load_report")
st.subheader(f"{plain(ss.dataset_label)}: {len(ds)} images in {len(ds.classes)} classes")
if report is not None:
    if report.skipped:
        with st.expander(f"{len(report.skipped)} file(s) could not be used"):
            st.table([{"file": name, "reason": reason} for name, reason in report.skipped])
warnings = list(report.warnings if report is not None else []) + data.dataset_warnings(ds)
if len(warnings) <= 3:
    for warning in warnings:
        st.warning(plain(warning))
elif warnings:
    # One box, not one per problem: a ZIP of 2,000 folders must not bury the page in boxes.
    st.warning(f"{len(warnings)} things to fix before training; the first: {plain(warnings[0])}")
    with st.expander(f"All {len(warnings)} warnings"):
        st.markdown("\n".join(f"- {plain(w)}" for w in warnings))

counts = ds.counts()
left, right = st.columns([2, 3])
with left:
    fig = go.Figure(go.Bar(x=list(counts.values()), y=list(counts.keys()), orientation="h"))
    fig.update_layout(height=60 + 30 * len(counts), margin=dict(l=0, r=0, t=10, b=0), xaxis_title="images")
    category_axes(fig, "yaxis")
    st.plotly_chart(fig, width="stretch")
with right:
    st.markdown("**Train / validation split** (stratified by class)")
    c1, c2 = st.columns(2)
    ss.val_fraction = c1.slider("Validation share", 0.1, 0.5, ss.val_fraction, step=0.05)
    ss.split_seed = c2.number_input("Split seed", 0, 10_000, ss.split_seed)
    try:
        train_ds, val_ds = data.split(ds, ss.val_fraction, ss.split_seed)
        tc, vc = train_ds.counts(), val_ds.counts()
        st.table([{"class": c, "train": tc.get(c, 0), "validation": vc.get(c, 0)} for c in ds.classes])
        data.check_split(train_ds, val_ds)
    except UserInputError as exc:
        st.error(plain(exc))

st.subheader("Preview")
for class_name in ds.classes:
    indices = [i for i, label in enumerate(ds.labels) if ds.classes[label] == class_name][:8]
    st.markdown(f"**{plain(class_name)}** ({counts.get(class_name, 0)})")
    cols = st.columns(8)
    for col, i in zip(cols, indices):
        col.image(ds[i][0], caption=plain(ds.names[i][-24:]), width="stretch")
if len(ds.classes) > 0 and not locked("data"):
    with st.expander("Remove a class"):
        doomed = st.selectbox("Class", ds.classes)
        if st.button("Remove it"):
            try:
                use_dataset(ds.without_class(doomed), ss.dataset_label, report)
            except UserInputError as exc:
                st.error(plain(exc))
            else:
                st.rerun()
