"""Use the model: predictions on new photos or the webcam, and the trained model exported as files."""

import plotly.graph_objects as go
import streamlit as st

from core import data as core_data
from core.analysis.ood import fit_ood
from core.analysis.predict import predict_proba, predict_tasks
from core.errors import UserInputError
from core.export import KINDS, build_bundle, onnx_available, onnx_export_available
from pages.ui.charts import category_axes
from pages.ui.models import model_picker, run_models, sample_photos
from pages.ui.multitask import is_multitask, multitask_split, same_tasks
from pages.ui.runs import finished_runs
from pages.ui.session import bootstrap, current_split
from pages.ui.text import chart_text, plain
from pages.ui.workspace import workspace

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Use the model")
st.write(
    "A trained run on images it has never seen: upload photos or take one with the webcam. Then take the "
    "model with you: each export is reloaded here and compared with the model it came from."
)

MAX_UPLOADS = 12
FORMATS = {
    "safetensors": ("safetensors", "The weights, safe to load (no code inside), and a JSON file with the "
                                          "class names and preprocessing. Rebuild the architecture to use them."),
    "torchscript": ("TorchScript", "The whole model as a program that PyTorch alone runs (`torch.jit.load`, no "
                                   "Transfer Lab code). PyTorch has deprecated TorchScript and warns when loading "
                                   "it; for new projects prefer ONNX or safetensors."),
    "onnx": ("ONNX", "A portable graph for onnxruntime, browsers and phones; any batch size."),
}


def top5_figure(probs, classes) -> go.Figure:
    order = probs.argsort(descending=True)[:5].tolist()[::-1]
    fig = go.Figure(go.Bar(x=[float(probs[i]) for i in order], y=[chart_text(classes[i]) for i in order], orientation="h",
                           text=[f"{float(probs[i]):.1%}" for i in order], textposition="auto",
                           marker_color=["#d62728" if i == order[-1] else "#9aa5b1" for i in order]))
    fig.update_layout(height=60 + 34 * len(order), margin=dict(l=0, r=0, t=10, b=0),
                      xaxis=dict(range=[0, 1], tickformat=".0%"))
    return category_axes(fig, "yaxis")


def pick_images(run_classes: list[str], validation=None) -> list:
    """(PIL image, caption) pairs from uploads, the webcam or the validation split.

    ``validation``: (validation images or None, labels -> words) for a run that is not trained on
    the current dataset's classes (a multi-task run); None when it cannot be shown, with why."""
    source = st.radio("Images", ["Upload", "Webcam", "A validation image", "A sample photo"], horizontal=True,
                      key="use-source")
    if source == "A sample photo":
        # real photos that ship with scikit-image: a quick way to see what a model does far from its data
        photos = sample_photos()
        name = st.selectbox("Photo (from scikit-image)", list(photos), key="use-photo")
        return [(photos[name], name)]
    if source == "Upload":
        # no type filter: its list of eleven extensions overflowed a projector, and scanners write
        # DICOMs without one; the decoder judges every file and says what it reads
        uploads = st.file_uploader("Photos (JPEG, PNG, GIF, BMP, WEBP, TIFF, DICOM)", accept_multiple_files=True,
                                   key="use-uploads")
        if len(uploads) > MAX_UPLOADS:
            st.warning(f"Showing the first {MAX_UPLOADS} of {len(uploads)} images.")
        images, window = [], workspace().dataset.window
        for upload in uploads[:MAX_UPLOADS]:
            try:
                # a 12-bit scan is seen through the dataset's window, as the model was trained
                images.append((core_data.open_image(upload.getvalue(), upload.name, window), upload.name))
            except UserInputError as exc:
                st.error(plain(exc))
        return images
    if source == "Webcam":
        shot = st.camera_input("Take a photo", key="use-camera")
        if shot is None:
            return []
        try:
            return [(core_data.open_image(shot.getvalue(), "webcam.jpg"), "webcam")]
        except UserInputError as exc:
            st.error(plain(exc))
            return []
    if validation is not None:
        val_ds, describe = validation
        if val_ds is None:
            st.error(describe)
            return []
    else:
        _, val_ds = current_split()
        describe = lambda label: f"labelled {val_ds.classes[label]}"  # noqa: E731
    if validation is None and list(val_ds.classes) != list(run_classes):
        # The label under the image would name a class of another dataset than the prediction's.
        st.error(f"This run was trained on the classes {plain(', '.join(run_classes))}; the current dataset has "
                 f"{plain(', '.join(val_ds.classes))}. Load the run's dataset on the Data page to try it on "
                 "validation images, or upload photos of the run's classes.")
        return []
    if len(val_ds) == 0:
        st.info("The validation split is empty.")
        return []
    i = st.slider("Validation image", 1, len(val_ds), 1, key="use-val") - 1 if len(val_ds) > 1 else 0
    image, label = val_ds[i]
    return [(image, f"{val_ds.names[i]} ({describe(label)})")]


def ood_detector(run_id: str, model):
    """The run's detector of unusual images, fitted once per run and split in this session (None
    when it cannot be: no validation split, or a dataset that is not the run's)."""
    train_ds, val_ds = current_split()
    key = (run_id, train_ds.fingerprint, val_ds.fingerprint)
    cache = ss.setdefault("_ood", {})
    if key not in cache:
        cache.clear()  # one detector at a time: it holds a covariance of the features
        if list(train_ds.classes) != list(model.classes):
            cache[key] = None
        else:
            try:
                with st.spinner("Measuring how the training images look to the model…"):
                    cache[key] = fit_ood(model, train_ds.images, val_ds.images)
            except UserInputError as exc:
                st.caption(plain(exc))
                cache[key] = None
    return cache[key]


def predictions_ui(run_id: str, model) -> None:
    images = pick_images(list(model.classes))
    if not images:
        st.caption("No image yet.")
        return
    probs = predict_proba(model, [img for img, _ in images])
    detector = ood_detector(run_id, model)
    scores = detector.score_images(model, [img for img, _ in images]) if detector is not None else None
    for n, ((image, caption), p) in enumerate(zip(images, probs, strict=True)):
        left, right = st.columns([1, 3])
        left.image(image, caption=plain(caption), width="stretch")
        best = int(p.argmax())
        if scores is not None and detector.unusual(scores[n]):
            right.warning(
                f"**Unlike anything it was trained on**: this image's features are {scores[n]:.0f} spreads from "
                f"the training images' (95 % of validation images are within {detector.threshold:.0f}). The model "
                f"can only answer with one of its classes, so the answer below is likely meaningless.",
                icon=":material/help:")
        right.markdown(f"**{plain(model.classes[best])}** — {float(p[best]):.1%}")
        right.plotly_chart(top5_figure(p, model.classes), width="stretch", key=f"top5-{n}")


def multitask_predictions_ui(record, model) -> None:
    """Every task's answer for each image at once: one head per task, each with its top classes."""
    tasks = model.tasks
    if same_tasks(record):
        _, val_ds = multitask_split()

        def describe(labels: dict) -> str:
            return "labelled " + ", ".join(f"{t} {tasks[t][v] if v >= 0 else '(none)'}" for t, v in labels.items())

        validation = (val_ds, describe)
    else:
        validation = (None, f"This run's tasks are {', '.join(tasks)}; the current dataset does not carry them. "
                            "Load the run's dataset on the Data page to try it on validation images.")
    images = pick_images(list(model.classes), validation)
    if not images:
        st.caption("No image yet.")
        return
    probs = predict_tasks(model, [img for img, _ in images])
    for n, (image, caption) in enumerate(images):
        left, right = st.columns([1, 3])
        left.image(image, caption=plain(caption), width="stretch")
        columns = right.columns(min(3, len(tasks)))
        for k, (task, classes) in enumerate(tasks.items()):
            p = probs[task][n]
            best = int(p.argmax())
            with columns[k % len(columns)]:
                st.markdown(f"{plain(task)}: **{plain(classes[best])}** — {float(p[best]):.1%}")
                st.plotly_chart(top5_figure(p, classes), width="stretch", key=f"top-{n}-{k}")


def check_line(check) -> None:
    if check is None:
        return
    if not check.ran:
        st.warning(check.message)
    elif check.same_predictions and check.max_abs_diff < 1e-3:
        st.success(f"Reloaded and checked on {check.images} images: the same predictions, largest logit "
                   f"difference {check.max_abs_diff:.1e}.")
    else:
        verdict = "the same predictions" if check.same_predictions else "**different predictions**"
        st.error(f"Reloaded and checked on {check.images} images: {verdict}, largest logit difference "
                 f"{check.max_abs_diff:.1e}. {check.message}")


def export_ui(run_id: str, model) -> None:
    st.subheader("Export the trained model")
    exports = ss.setdefault("_exports", {})
    for key in [k for k in exports if k[0] != run_id]:
        del exports[key]  # one run's bundles at a time: each is as big as the model
    _, val_ds = current_split()
    check_images = [val_ds[i][0] for i in range(min(8, len(val_ds)))]
    columns = st.columns(len(KINDS))
    for column, kind in zip(columns, KINDS, strict=True):
        title, about = FORMATS[kind]
        with column:
            st.markdown(f"**{title}**")
            st.caption(about)
            if kind == "onnx" and not onnx_export_available():
                st.caption("The onnx package is not installed on this server, so ONNX export is unavailable.")
            elif kind == "onnx" and not onnx_available():
                st.caption("onnxruntime is not installed on this server: the file is written but not checked.")
            bundle = exports.get((run_id, kind))
            slot = st.empty()
            if bundle is None and slot.button(f"Export as {title}", key=f"export-{kind}", icon=":material/output:",
                                                       width="stretch"):
                slot.empty()  # the button has done its job; the check and the download take its place
                try:
                    with st.spinner(f"Writing and checking the {title} file…"):
                        bundle = build_bundle(model, kind, check_images or None)
                except UserInputError as exc:
                    st.error(plain(exc))
                else:
                    exports[(run_id, kind)] = bundle
            if bundle is not None:
                check_line(bundle.check)
                # the three bundles share a file name stem: the button says which format it holds
                st.download_button(f"Download the {title} ZIP", bundle.data, file_name=bundle.filename,
                                   mime="application/zip", key=f"download-{kind}", on_click="ignore",
                                   icon=":material/download:")
                st.caption(f"{bundle.filename}, {len(bundle.data) / 2**20:.1f} MB: the model file, model.json "
                           "(classes, preprocessing) and a README.")


runs = finished_runs()
if not runs:
    st.info("Train a run first (on the Train page): a finished run is what you use and export here.")
    st.stop()
run_id, record = model_picker("Run")
if run_id is None:
    st.info("Pick a trained run: the pretrained backbone alone knows ImageNet's classes, not yours.")
    st.stop()
try:
    model = run_models(run_id).after
except UserInputError as exc:
    st.error(plain(exc))
    st.stop()
if is_multitask(record):
    st.caption(f"{record.backbone} · a head per task: "
               + plain("; ".join(f"{t} ({', '.join(c)})" for t, c in model.tasks.items()))
               + f" · input {model.image_size} px")
    multitask_predictions_ui(record, model)
else:
    st.caption(f"{record.backbone} · classes: {plain(', '.join(model.classes))} · input {model.image_size} px")
    classes = workspace().dataset.classes
    if list(model.classes) != list(classes):
        st.warning(f"This run knows the classes {plain(', '.join(model.classes))}, not the current dataset's "
                   f"({plain(', '.join(classes))}): it can only name one of its own classes.")
    predictions_ui(run_id, model)
st.divider()
export_ui(run_id, model)
