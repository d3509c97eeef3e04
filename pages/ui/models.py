"""The models a page shows: the backbones on offer, a session's own model cache, a run's before and
after, and pickers for a model and an image (the Model page's choice and its presets are the workspace's)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import streamlit as st

from core import data as core_data
from core import models
from core.devices import describe_device, pick_device
from core.errors import UserInputError
from pages.ui.runs import finished_runs, run_option, run_store, unchanged_groups, weights_caption
from pages.ui.text import plain
from pages.ui.workspace import workspace

__all__ = ["device_label", "backbone_catalogue", "group_table", "ModelPair", "SESSION_MODEL_SLOTS", "ModelCache",
           "session_models", "session_model", "run_models", "model_picker", "image_picker", "SAMPLE_PHOTOS",
           "sample_photos"]


@st.cache_resource
def device_label() -> str:
    return describe_device(pick_device())


@st.cache_data(show_spinner=False)
def backbone_catalogue() -> list[dict]:
    return [info.__dict__.copy() for info in models.list_backbones()]


@st.cache_data(show_spinner="Reading the backbone's layers…")
def group_table(name: str, num_classes: int = 2) -> list[dict]:
    """Layer groups of a classifier for ``num_classes`` with their parameter counts (plain data)."""
    bb = models.load(name, pretrained=False)
    model = models.classifier(bb, max(2, num_classes))
    params = models.group_parameters(model, bb.layer_groups)
    return [
        {"group": g.name, "modules": ", ".join(g.modules) if len(g.modules) <= 3 else
         f"{g.modules[0]} … {g.modules[-1]} ({len(g.modules)} blocks)",
         "params": sum(p.numel() for p in params[g.name])}
        for g in bb.layer_groups
    ]


@dataclass
class ModelPair:
    """A model before and after fine-tuning (the same object twice for the backbone alone)."""

    before: object
    after: object
    preprocess: object
    layer_groups: list
    classes: list
    frozen: list
    compared: bool


# How many models one session keeps (a run's before/after pair counts as two): enough for a run,
# its pretrained backbone and one more page's model, few enough that a classroom fits in memory.
SESSION_MODEL_SLOTS = 4


class ModelCache:
    """A session's models, least recently used first out once they hold more than ``slots`` models.

    Each session has its own (see ``session_models``): one person's hooks, train/eval modes and
    weights never reach another person's model. Safe to use from a session's worker threads.
    """

    def __init__(self, slots: int = SESSION_MODEL_SLOTS):
        self.slots = max(1, int(slots))
        self._items: OrderedDict = OrderedDict()  # key -> (value, how many models it holds)
        self._lock = threading.Lock()

    def get(self, key, build, weight: int = 1):
        """The value kept under ``key``, or ``build()`` kept there (``weight``: how many models it holds)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = build()  # outside the lock: loading a model can take seconds
        with self._lock:
            if key in self._items:  # another thread of this session built it meanwhile
                return self._items[key][0]
            self._items[key] = (value, max(1, int(weight)))
            while len(self._items) > 1 and sum(w for _, w in self._items.values()) > self.slots:
                self._items.popitem(last=False)
            return value

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list:
        """The keys kept, least recently used first."""
        with self._lock:
            return list(self._items)


def session_models() -> ModelCache:
    """This session's one model cache."""
    return st.session_state.setdefault("_model_cache", ModelCache())


def session_model(key, build, weight: int = 1):
    """A model (or a value holding ``weight`` models) kept for this session only, built on first use.

    Use a key that says what was loaded (e.g. ``("run", run_id)``): every page shares the cache,
    so two pages asking for the same key get the same object.
    """
    return session_models().get(key, build, weight)


def run_models(run_id: str | None, backbone: str = models.DEFAULT_BACKBONE) -> ModelPair:
    """The models to inspect: a run's before and after, or a pretrained backbone alone (kept in
    this session's model cache, so one person's hooks never touch another's model)."""
    if run_id:
        store = run_store()
        store.touch(run_id)  # on screen: the disk cap leaves it alone

        def build():
            after = store.load_model(run_id)
            return ModelPair(store.load_starting_model(run_id), after, after.preprocess, after.layer_groups,
                             after.classes, unchanged_groups(store.get(run_id)), True)

        return session_model(("run", run_id), build, weight=2)

    def pretrained():
        bb = models.load(backbone)
        return ModelPair(bb.model, bb.model, bb.preprocess, bb.layer_groups, bb.categories, [], False)

    return session_model(("pretrained", backbone), pretrained)


def model_picker(label: str = "Model"):
    """Pick a finished run of this person, or the pretrained default backbone alone."""
    runs = finished_runs()
    options = [None] + [r.id for r in runs]
    names = {r.id: run_option(r) for r in runs}
    current = workspace().current_run
    index = options.index(current) if current in options else (1 if runs else 0)
    run_id = st.selectbox(label, options, index=index,
                          format_func=lambda r: names.get(r, r) if r else "Pretrained EfficientNet-Lite0 alone (ImageNet)")
    record = run_store().get(run_id) if run_id else None
    if record is not None and weights_caption(record):
        st.caption(f":material/history: {weights_caption(record)}")
    return run_id, record


def image_picker(key: str):
    """An image from the dataset, an upload or a sample photo; returns (PIL image, caption)."""
    ds = workspace().dataset
    source = st.radio("Image", ["From the dataset", "Sample photo", "Upload"], horizontal=True, key=f"{key}-src")
    if source == "From the dataset":
        class_name = st.selectbox("Class", ds.classes, key=f"{key}-class")
        indices = [i for i, label in enumerate(ds.labels) if ds.classes[label] == class_name]
        pick = st.slider("Which image", 1, len(indices), 1, key=f"{key}-idx") if len(indices) > 1 else 1
        i = indices[pick - 1]
        return ds[i][0], f"{class_name} · {ds.names[i]}"
    if source == "Sample photo":
        photos = sample_photos()
        name = st.selectbox("Photo (from scikit-image)", list(photos), key=f"{key}-photo")
        return photos[name], name
    # no type filter (DICOMs often have no extension, and the list overflowed a projector): the decoder judges
    upload = st.file_uploader("An image (JPEG, PNG, GIF, BMP, WEBP, TIFF, DICOM)", key=f"{key}-upload")
    if upload is None:
        return None, ""
    try:
        # a 12-bit scan is seen through the dataset's window, as on the Data page
        return core_data.open_image(upload.getvalue(), upload.name, ds.window), upload.name
    except UserInputError as exc:
        st.error(plain(exc))
        return None, ""


SAMPLE_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "cat")


@st.cache_data(show_spinner=False)
def sample_photos() -> dict:
    """Real photos that ship with scikit-image, for explaining the ImageNet model itself."""
    from PIL import Image
    from skimage import data as skdata

    photos = {}
    for name in SAMPLE_PHOTOS:
        loader = getattr(skdata, name, None)
        if loader is not None:
            photos[name] = Image.fromarray(loader()).convert("RGB")
    return photos
