"""Data: pick the demo set or bring images (a ZIP of class folders, single files, the webcam), and
choose the window through which images of more than 8 bits (X-ray, CT, microscopy) are seen."""

import base64
import binascii
import hashlib
from itertools import zip_longest
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core import data
from core.errors import UserInputError
from pages.ui.charts import category_axes
from pages.ui.links import hidden, locked
from pages.ui.session import DEMO_LABEL, bootstrap, demo
from pages.ui.text import chart_text, plain, table
from pages.ui.workspace import workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss, ws = st.session_state, workspace()
st.title("Data")
# The first screen a visitor sees: what the app is for and the two ways in, in three lines.
st.markdown("**Transfer Lab** shows how a network pretrained on ImageNet learns *your* images: choose which "
            "layers to freeze, train while the curves grow, then look inside to see what changed.")
st.page_link("pages/lessons.py", label="New here? Start with Lesson 1: why pretrained weights help",
             icon=":material/school:")
st.markdown("Or bring your own images below (a ZIP with one folder per class, single files or the webcam), "
            "or keep the built-in demo shapes, and go on to **Model** and **Train**.")

# What the current dataset started from (the demo set, a ZIP), so its name can say what it holds;
# None for a dataset of one's own images only.
if "dataset_base" not in ss:
    ss.dataset_base = (ws.dataset_label, tuple(ws.dataset.classes))


def use_dataset(ds, base: tuple | None, report=None, label: str | None = None, keep_tasks: bool = False) -> None:
    """Make ``ds`` the session's dataset; ``base`` is (name, classes) of the set it started from."""
    name, classes = base or ("", ())
    if not ws.set_dataset(ds, label or data.dataset_name(ds.classes, name, classes), report):
        st.error("Your teacher's link locks the dataset: it stays as it is.")
        return
    ss.dataset_base = base
    if not keep_tasks:
        ss.pop("multitask", None)


def use_multitask(ds, label: str, report=None) -> None:
    """Keep every task's labels; the other pages train one task at a time, the first to begin with."""
    task = ds.task_names[0]
    single = ds.as_single_task(task)
    use_dataset(single, (label, tuple(single.classes)), report, label=f"{label} · {task}")
    ss.multitask = {"dataset": ds, "label": label, "report": report}


def multitask_ui(mt: dict) -> None:
    ds = mt["dataset"]
    st.subheader(f"{plain(mt['label'])}: {len(ds)} images labelled for {len(ds.tasks)} tasks")
    rows = [{"task": t, "class": c, "images": n} for t, counts in ds.counts().items() for c, n in counts.items()]
    st.dataframe(rows, hide_index=True)
    task = st.selectbox("Task the other pages train", ds.task_names, key="multitask_task")
    if st.button("Train on this task"):
        single = ds.as_single_task(task)
        use_dataset(single, (mt["label"], tuple(single.classes)), mt["report"], label=f"{mt['label']} · {task}",
                    keep_tasks=True)
        st.rerun()


def demo_ui() -> None:
    col1, col2 = st.columns(2)
    look = col1.radio("Look", ["source", "target"], horizontal=True,
                      help="The same shape classes drawn in two styles: a domain shift.")
    per_class = col2.slider("Images per class", 5, 60, 20, step=5)
    if st.button("Use the demo set", type="primary"):
        ds = demo(look, per_class)
        use_dataset(ds, (f"{DEMO_LABEL} ({look} look)", tuple(ds.classes)))
        st.rerun()
    if st.button("Use the multi-task demo (shape, colour, size)"):
        use_multitask(data.demo_multitask(per_class=per_class), "Multi-task demo")
        st.rerun()


FRAME_LABELS = {"middle": "its middle frame", "each": "every frame, one image each"}


def frames_ui(key: str) -> str:
    """How a multi-frame DICOM (a cine loop, a stack of slices) is read."""
    return st.radio("A multi-frame DICOM gives", data.FRAME_CHOICES, format_func=FRAME_LABELS.get, horizontal=True,
                    key=key, help=f"Files of more than {data.limits.MAX_FRAMES} frames are skipped with their reason.")


def zip_ui() -> None:
    # A fresh key once a ZIP is loaded empties the uploader, so the server lets go of the archive's
    # bytes (DICOM headers in it name patients): the dataset keeps only the decoded pixels.
    n = ss.setdefault("zip_round", 0)
    upload = st.file_uploader("A ZIP with one folder per class (e.g. cats/…, dogs/…)", type=["zip"], key=f"zip-{n}")
    st.caption("Several labels per image: add a labels.csv to the ZIP (image path, then one column per "
               "task; an empty cell means not labelled for that task). JPEG, PNG, GIF, BMP, WEBP, TIFF and DICOM "
               "(.dcm, or files without an extension as scanners name them).")
    frames = frames_ui("zip-frames")
    if upload is not None and st.button("Load this ZIP", type="primary"):
        try:
            ds, report = data.load_zip(upload.getvalue(), frames=frames)
        except UserInputError as exc:
            st.error(f"{plain(upload.name)}: {plain(exc)} Your current dataset is unchanged.")
            return
        if isinstance(ds, data.MultiTaskDataset):  # a ZIP with labels.csv: one label per task
            use_multitask(ds, upload.name, report)
        else:
            use_dataset(ds, (upload.name, tuple(ds.classes)), report)
        ss.zip_round = n + 1
        st.rerun()


# --- your own images: single files and the webcam -----------------------------------------------

NEW, CURRENT = "new", "current"


def target_ui() -> None:
    """Where one's own images go: a new dataset unless the current one is already one's own."""
    if ss.pop("_target_reset", False):
        ss.pop("own_target", None)
    if "own_target" not in ss:
        ss.own_target = CURRENT if ss.dataset_base is None else NEW
    st.radio("Put them in", [NEW, CURRENT], key="own_target", horizontal=True,
             format_func=lambda t: "a new dataset" if t == NEW else f"the current dataset ({ws.dataset_label})",
             help="A new dataset holds only your images; the current one keeps what it has and gains a class.")


def add_own(files: list[tuple[str, bytes]], class_name: str, frames: str = "middle") -> bool:
    """Add exactly ``files`` to ``class_name``; says what happened next to the button. True when added."""
    start_new = ss.get("own_target", NEW) == NEW
    base_ds = data.ImageDataset() if start_new else ws.dataset
    try:
        ds, report = data.add_images(base_ds, files, class_name, frames)
    except UserInputError as exc:
        ss.data_notice = ("error", f"{plain(exc)} Your current dataset is unchanged.", [])
        return False
    # the warnings go next to the button (below), the skipped files stay listed under the dataset
    use_dataset(ds, None if start_new else ss.dataset_base,
                data.LoadReport(report.loaded, report.skipped, [], report.notes))
    if start_new:
        ss._target_reset = True  # the next class goes into the dataset just made, not another new one
    count = ds.counts()[class_name.strip()]
    added = f"Added {report.loaded} image{'s' if report.loaded != 1 else ''} to {plain(repr(class_name.strip()))}"
    ss.data_notice = ("success", f"{added}: it now holds {count}." + (" (a new dataset)" if start_new else ""),
                      report.warnings)
    return True


def show_notice() -> None:
    """The outcome of the last add, right where the click was; a toast too, once.

    It stays until the next add: a rerun from any other widget must not wipe the confirmation.
    """
    notice = ss.get("data_notice")
    if notice is None:
        return
    kind, text, warnings = notice
    if kind == "success":
        st.success(text, icon=":material/check_circle:")
        if not ss.get("_toasted") == text:
            st.toast(text, icon=":material/check_circle:")
            ss._toasted = text
    else:
        st.error(text)
    for warning in warnings:
        st.warning(plain(warning))  # it names files and classes


def files_ui() -> None:
    target_ui()
    # A fresh key after each add empties the uploader and the class name, so the next class starts
    # from nothing and never gets the previous class's files.
    n = ss.setdefault("files_round", 0)
    class_name = st.text_input("Class name", placeholder="e.g. mug", key=f"files_class-{n}").strip()
    # No type filter: DICOM files from a scanner often have no extension; the decoder judges every file.
    files = st.file_uploader("Images (JPEG, PNG, GIF, BMP, WEBP, TIFF, DICOM)", accept_multiple_files=True,
                             key=f"files-{n}")
    frames = frames_ui("files-frames")
    label = f"Add {len(files)} image{'s' if len(files) != 1 else ''} to {class_name!r}" if files and class_name \
        else "Add to class"
    if st.button(label, type="primary", disabled=not (files and class_name), key="files-add"):
        if add_own([(f.name, f.getvalue()) for f in files], class_name, frames):
            ss.files_round = n + 1
        st.rerun()
    show_notice()


BURST_ROOT = Path(__file__).resolve().parent.parent / "assets"
# Streamlit's own custom-component API (no iframe, nothing fetched): one click records a timed
# burst in the browser, where st.camera_input would need a click (and a rerun) per frame.
burst_camera = st.components.v2.component(
    "burst_camera",
    html='<div class="burst"><video muted playsinline></video>'
         '<div class="row"><button type="button"></button><span class="status" aria-live="polite"></span></div></div>',
    css=".burst video{width:100%;max-height:260px;border-radius:.5rem;background:#000}"
        ".row{display:flex;gap:.75rem;align-items:center;flex-wrap:wrap;margin-top:.5rem;font-family:var(--st-font)}"
        "button{font:inherit;padding:.4rem .9rem;border-radius:.5rem;border:1px solid var(--st-primary-color);"
        "background:var(--st-primary-color);color:#fff;cursor:pointer}"
        "button:disabled{opacity:.5;cursor:not-allowed}"
        ".status{color:var(--st-text-color)}",
    js=(BURST_ROOT / "burst_camera.js").read_text(encoding="utf-8"),
)
MAX_BURST = 60


def keep_frames(payloads: list[bytes]) -> int:
    """Put recorded frames into the burst, each frame once (by its bytes); returns how many were new."""
    burst = ss.setdefault("burst", [])
    held = {frame["digest"] for frame in burst}
    new = 0
    for payload in payloads:
        digest = hashlib.sha256(payload).hexdigest()
        if digest not in held and len(burst) < MAX_BURST:
            held.add(digest)
            burst.append({"digest": digest, "bytes": payload})
            new += 1
    return new


def frame_bytes(urls) -> list[bytes]:
    """The JPEG bytes inside the component's data URLs; anything else is dropped (core decodes safely)."""
    frames = []
    for url in urls if isinstance(urls, list) else []:
        head, _, body = str(url).partition(",")
        if head.startswith("data:image/") and head.endswith(";base64"):
            try:
                frames.append(base64.b64decode(body, validate=True))
            except binascii.Error:
                continue
    return frames


def drop_frame(digest: str) -> None:
    ss.burst = [frame for frame in ss.get("burst", []) if frame["digest"] != digest]


def webcam_ui() -> None:
    target_ui()
    c1, c2, c3 = st.columns([3, 2, 2])
    class_name = c1.text_input("Class name", placeholder="e.g. thumbs up", key="cam_class").strip()
    goal = int(c2.number_input("Frames to record", 1, MAX_BURST, 10, key="cam_goal"))
    seconds = int(c3.number_input("Over (seconds)", 1, 60, 5, key="cam_seconds",
                                  help="The frames are spread over this time: move or turn a little meanwhile."))
    camera, frames = st.columns([3, 2])
    with camera:
        shot = burst_camera(key="burst_camera", data={"frames": goal, "seconds": seconds, "ready": bool(class_name),
                                                      "hint": "Name the class first."},
                            on_frames_change=lambda: None)
    if shot.frames:
        keep_frames(frame_bytes(shot.frames)[:goal])
    burst = ss.setdefault("burst", [])
    # the count and the new thumbnails appear right beside the camera's button
    frames.progress(min(len(burst) / goal, 1.0),
                    text=f"{len(burst)} / {goal} frames recorded" + (f" for {class_name!r}" if class_name else
                                                                     ": name the class first"))
    # two a row: beside the camera, at three a row a projector's 800 px cut each button to "× R"
    per_row = 2
    for start in range(0, len(burst), per_row):
        cols = frames.columns(per_row)
        for col, (i, frame) in zip(cols, enumerate(burst[start:start + per_row], start=start + 1), strict=False):
            col.image(frame["bytes"], caption=f"frame {i}", width="stretch")
            col.button("Remove", key=f"drop-{frame['digest'][:16]}", on_click=drop_frame,
                       args=(frame["digest"],), help=f"Remove frame {i}")
    a, b = st.columns(2)
    # `and burst`: a second click on Add lands after the first emptied the burst, and adds nothing
    if a.button(f"Add {len(burst)} frame{'s' if len(burst) != 1 else ''} to {class_name!r}" if burst and class_name
                else "Add the frames", type="primary", disabled=not (burst and class_name), key="cam-add") and burst:
        start = ws.dataset.counts().get(class_name, 0) if ss.get("own_target") == CURRENT else 0
        files = [(f"webcam-{start + i + 1}.jpg", frame["bytes"]) for i, frame in enumerate(burst)]
        if add_own(files, class_name):
            ss.burst = []
        st.rerun()
    if burst and b.button("Discard these frames", key="cam-discard"):
        ss.burst = []
        st.rerun()
    show_notice()


sources = {"Demo set": demo_ui, "ZIP of class folders": zip_ui, "Single images": files_ui, "Webcam": webcam_ui}
if hidden("uploads"):
    sources = {"Demo set": demo_ui}
if locked("data"):
    st.caption("Your teacher's link fixed the dataset for this class.")
else:
    with st.container(border=True):
        choice = st.radio("Bring images from", list(sources), horizontal=True) if len(sources) > 1 else "Demo set"
        sources[choice]()

if ss.get("multitask") is not None:
    multitask_ui(ss.multitask)

ds, report = ws.dataset, ws.load_report
st.subheader(f"{plain(ws.dataset_label)}: {len(ds)} images in {len(ds.classes)} classes")
if report is not None:
    for note in getattr(report, "notes", []):  # a report kept from before notes existed has none
        st.info(plain(note), icon=":material/info:")  # it names files
    if report.skipped:
        with st.expander(f"{len(report.skipped)} file(s) could not be used"):
            table([{"file": name, "reason": reason} for name, reason in report.skipped])
warnings = list(report.warnings if report is not None else []) + data.dataset_warnings(ds)
if len(warnings) <= 3:
    for warning in warnings:
        st.warning(plain(warning))
elif warnings:
    # One box, not one per problem: a ZIP of 2,000 folders must not bury the page in boxes.
    st.warning(f"{len(warnings)} things to fix before training; the first: {plain(warnings[0])}")
    with st.expander(f"All {len(warnings)} warnings"):
        st.markdown("\n".join(f"- {plain(w)}" for w in warnings))



@st.cache_data(show_spinner=False, max_entries=4)
def full_depth_histogram(fingerprint: str, _images: list) -> tuple:
    """The dataset's full-depth pixel values as a histogram (cached by the dataset's fingerprint)."""
    return data.histogram(_images, bins=120)


def set_window(window) -> bool:
    """See the session's dataset (and the multi-task set it came from) through ``window``; False, and
    says why, when a link locks the data."""
    if not ws.set_window(window):
        st.error("Your teacher's link locks the dataset, and its window with it: the model keeps seeing the "
                 "images through the window in use. You can still try windows here.")
        return False
    if ss.get("multitask") is not None:
        ss.multitask = {**ss.multitask, "dataset": ss.multitask["dataset"].with_window(window)}
    return True


def window_figure(counts, edges, low: float, high: float) -> go.Figure:
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centres, y=counts, width=edges[1] - edges[0], marker_color="#888",
                           hovertemplate="%{x:.4g}: %{y} pixels<extra></extra>"))
    fig.add_vrect(x0=low, x1=high, fillcolor="#f0b400", opacity=0.25, line_width=0)
    for x, text in ((low, "black"), (high, "white")):
        fig.add_vline(x=x, line_color="#f0b400", annotation_text=text, annotation_position="top")
    fig.update_layout(height=220, margin=dict(l=0, r=0, t=24, b=0), yaxis_type="log", bargap=0,
                      xaxis_title="pixel value (full depth)", yaxis_title="pixels", showlegend=False)
    return fig


def window_ui(ds) -> None:
    """The window of the images of more than 8 bits: a histogram, centre and width, a live preview."""
    full = ds.full_depth
    st.subheader("Window (images of more than 8 bits)")
    st.write(f"{len(full)} of the {len(ds)} images hold more than 8 bits per pixel (a 12-bit X-ray has 4,096 grey "
             "levels). The model sees 256: the window says which values become black (its low end and below), "
             "which white (its high end and above), and spreads those between over the grey levels. The default "
             "spans the 0.5–99.5 percentiles of the dataset's pixel values, so a few hot pixels do not darken "
             "the rest. Training, Feature maps and Saliency all see the images through this window.")
    counts, edges = full_depth_histogram(ds.fingerprint, full)
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo
    step = 1.0 if span >= 200 else span / 200
    fmt = "%.0f" if step >= 1 else "%.4g"
    win = ds.window
    key = ds.fingerprint[:12]  # new sliders once the dataset or its window changes
    c1, c2 = st.columns(2)
    centre = c1.slider("Window centre", lo, hi, min(max(win.centre, lo), hi), step=step, format=fmt,
                       key=f"win-centre-{key}", help="The value shown mid-grey.")
    width = c2.slider("Window width", step, max(span, step) * 2, min(max(win.width, step), max(span, step) * 2),
                      step=step, format=fmt, key=f"win-width-{key}",
                      help="The range of values spread over the grey levels: narrower shows more contrast.")
    chosen = data.Window.from_centre_width(centre, width)
    st.plotly_chart(window_figure(counts, edges, chosen.low, chosen.high), width="stretch", key="win-histogram",
                    config={"displayModeBar": False})  # it would hide the "white" end's label
    state = "set by hand" if ds.window_chosen else "the default, 0.5–99.5 percentiles"
    st.caption(f"In use: {win.low:.6g} to {win.high:.6g} (centre {win.centre:.6g}, width {win.width:.6g}; {state}). "
               f"Shown below: {chosen.low:.6g} to {chosen.high:.6g}.")
    by_class = [[i for i, label in enumerate(ds.labels) if label == k and ds.full_depth_image(i) is not None]
                for k in range(len(ds.classes))]
    picks = [i for row in zip_longest(*by_class) for i in row if i is not None][:6]  # every class, in turn
    cols = st.columns(6)
    for col, i in zip(cols, picks, strict=False):
        col.image(data.apply_window(ds.full_depth_image(i), chosen), caption=plain(short(ds.names[i])),
                  width="stretch")
    b1, b2 = st.columns(2)
    if b1.button("Use this window", type="primary", disabled=chosen == win, key="win-use") and set_window(chosen):
        st.rerun()
    if b2.button("Back to the default window", disabled=not ds.window_chosen, key="win-default") and set_window(None):
        st.rerun()


def short(name: str, most: int = 18) -> str:
    """A file name cut in the middle, so both its start and its extension stay readable."""
    name = name.rsplit("/", 1)[-1]
    return name if len(name) <= most else f"{name[:most // 2 - 1]}…{name[-(most // 2):]}"


if ds.window is not None:
    with st.container(border=True):
        window_ui(ds)

counts = ds.counts()
left, right = st.columns([2, 3])
with left:
    fig = go.Figure(go.Bar(x=list(counts.values()), y=[chart_text(c) for c in counts], orientation="h"))
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
        table([{"class": c, "train": tc.get(c, 0), "validation": vc.get(c, 0)} for c in ds.classes])
        data.check_split(train_ds, val_ds)
    except UserInputError as exc:
        st.error(plain(exc))


st.subheader("Preview")
for class_name in ds.classes:
    indices = [i for i, label in enumerate(ds.labels) if ds.classes[label] == class_name][:8]
    st.markdown(f"**{plain(class_name)}** ({counts.get(class_name, 0)})")
    cols = st.columns(8)
    for col, i in zip(cols, indices, strict=False):
        col.image(ds[i][0], caption=plain(short(ds.names[i])), width="stretch")
if len(ds.classes) > 0 and not locked("data"):
    with st.expander("Remove a class"):
        doomed = st.selectbox("Class", ds.classes)
        if st.button("Remove it"):
            try:
                use_dataset(ds.without_class(doomed), ss.dataset_base, report)
            except UserInputError as exc:
                st.error(plain(exc))
            else:
                st.rerun()
