"""Data: pick the demo set or bring images (a ZIP of class folders, single files, the webcam)."""

import plotly.graph_objects as go
import streamlit as st

from core import data
from core.errors import UserInputError
from pages._shared import DEMO_LABEL, demo

ss = st.session_state
st.title("Data")
st.write("Pick the built-in demo set or bring your own images, one class per folder.")


def use_dataset(ds, label: str, report=None, keep_tasks: bool = False) -> None:
    ss.dataset, ss.dataset_label, ss.load_report = ds, label, report
    if not keep_tasks:
        ss.pop("multitask", None)


def use_multitask(ds, label: str, report=None) -> None:
    """Keep every task's labels; the other pages train one task at a time, the first to begin with."""
    task = ds.task_names[0]
    use_dataset(ds.as_single_task(task), f"{label} · {task}", report)
    ss.multitask = {"dataset": ds, "label": label, "report": report}


def multitask_ui(mt: dict) -> None:
    ds = mt["dataset"]
    st.subheader(f"{mt['label']}: {len(ds)} images labelled for {len(ds.tasks)} tasks")
    rows = [{"task": t, "class": c, "images": n} for t, counts in ds.counts().items() for c, n in counts.items()]
    st.dataframe(rows, hide_index=True)
    task = st.selectbox("Task the other pages train", ds.task_names, key="multitask_task")
    if st.button("Train on this task"):
        use_dataset(ds.as_single_task(task), f"{mt['label']} · {task}", mt["report"], keep_tasks=True)
        st.rerun()


def demo_ui() -> None:
    col1, col2 = st.columns(2)
    look = col1.radio("Look", ["source", "target"], horizontal=True,
                      help="The same shape classes drawn in two styles: a domain shift.")
    per_class = col2.slider("Images per class", 5, 60, 20, step=5)
    if st.button("Use the demo set", type="primary"):
        use_dataset(demo(look, per_class), f"{DEMO_LABEL} ({look} look)")
        st.rerun()
    if st.button("Use the multi-task demo (shape, colour, size)"):
        use_multitask(data.demo_multitask(per_class=per_class), "Multi-task demo")
        st.rerun()


def zip_ui() -> None:
    upload = st.file_uploader("A ZIP with one folder per class (e.g. cats/…, dogs/…)", type=["zip"])
    st.caption("Several labels per image: add a labels.csv to the ZIP (image path, then one column per "
               "task; an empty cell means not labelled for that task).")
    if upload is not None and st.button("Load this ZIP", type="primary"):
        try:
            ds, report = data.load_zip(upload.getvalue())
        except UserInputError as exc:
            st.error(f"{upload.name}: {exc} Your current dataset is unchanged.")
            return
        if isinstance(ds, data.MultiTaskDataset):  # a ZIP with labels.csv: one label per task
            use_multitask(ds, upload.name, report)
        else:
            use_dataset(ds, upload.name, report)
        st.rerun()


def add_images_ui(files, class_name: str) -> None:
    try:
        images, report = data.load_images(files, class_name)
        if not images:
            raise UserInputError("None of these files could be used as an image.")
        ds = ss.dataset.with_images(images, class_name)
    except UserInputError as exc:
        st.error(f"{exc} Your current dataset is unchanged.")
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
with st.container(border=True):
    choice = st.radio("Bring images from", list(sources), horizontal=True)
    sources[choice]()

if ss.get("multitask") is not None:
    multitask_ui(ss.multitask)

ds = ss.dataset
report = ss.get("load_report")
st.subheader(f"{ss.dataset_label}: {len(ds)} images in {len(ds.classes)} classes")
if report is not None:
    if report.skipped:
        with st.expander(f"{len(report.skipped)} file(s) could not be used"):
            st.table([{"file": name, "reason": reason} for name, reason in report.skipped])
    for warning in report.warnings:
        st.warning(warning)
for warning in data.dataset_warnings(ds):
    st.warning(warning)

counts = ds.counts()
left, right = st.columns([2, 3])
with left:
    fig = go.Figure(go.Bar(x=list(counts.values()), y=list(counts.keys()), orientation="h"))
    fig.update_layout(height=60 + 30 * len(counts), margin=dict(l=0, r=0, t=10, b=0), xaxis_title="images")
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
    except UserInputError as exc:
        st.error(str(exc))

st.subheader("Preview")
for class_name in ds.classes:
    indices = [i for i, label in enumerate(ds.labels) if ds.classes[label] == class_name][:8]
    st.markdown(f"**{class_name}** ({counts.get(class_name, 0)})")
    cols = st.columns(8)
    for col, i in zip(cols, indices):
        col.image(ds[i][0], caption=ds.names[i][-24:], width="stretch")
if len(ds.classes) > 0:
    with st.expander("Remove a class"):
        doomed = st.selectbox("Class", ds.classes)
        if st.button("Remove it"):
            try:
                use_dataset(ds.without_class(doomed), ss.dataset_label, report)
            except UserInputError as exc:
                st.error(str(exc))
            else:
                st.rerun()
