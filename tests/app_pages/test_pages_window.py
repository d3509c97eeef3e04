"""The Data page's window for images of more than 8 bits: histogram, centre and width, live preview."""

import numpy as np
import pytest

from core import data
from tests.app_pages.pages_helpers import button, charts, fresh_app, messages, open_page, texts, widget
from tests.toys import DICOM_PATIENT, dicom_zip


@pytest.fixture
def dicom_page():
    ds, report = data.load_zip(dicom_zip(per_class=5))
    at = fresh_app(state={"dataset": ds, "dataset_label": "scans.zip", "load_report": report})
    return open_page(at, "data")


def shown(at) -> str:
    """Everything the page says in words."""
    parts = messages(at) + [e.value for e in at.markdown] + [e.value for e in at.caption]
    parts += [e.value for e in at.subheader] + charts(at)
    return "\n".join(str(p) for p in parts)


def test_a_dicom_set_gets_a_window_control_with_a_histogram_and_says_what_was_dropped(dicom_page):
    at = dicom_page
    page = shown(at)
    assert "Window (images of more than 8 bits)" in page and "10 of the 10 images" in page
    assert "Patient name, ID, birth date, accession number, institution" in page
    assert DICOM_PATIENT not in page and DICOM_PATIENT.split("^")[0] not in page
    assert any('"type":"bar"' in c.replace(" ", "") and '"log"' in c for c in charts(at))  # the histogram
    default = at.session_state.dataset.window
    assert widget(at.slider, "Window centre").value == pytest.approx(default.centre, abs=1)


def test_the_chosen_window_is_what_the_dataset_and_the_model_see_until_reset(dicom_page):
    at = dicom_page
    before = at.session_state.dataset
    widget(at.slider, "Window centre").set_value(2000.0).run()
    widget(at.slider, "Window width").set_value(300.0).run()
    assert "Shown below: 1850 to 2150" in shown(at)
    assert at.session_state.dataset.window == before.window  # a preview until the button is pressed
    button(at, "Use this window").click().run()
    ds = at.session_state.dataset
    assert ds.window == data.Window(1850, 2150) and ds.window_chosen and "set by hand" in shown(at)
    seen = np.asarray(ds[0][0])[..., 0]
    raw = np.asarray(ds.full_depth_image(0))
    assert seen[raw <= 1850].max(initial=0) == 0 and seen[raw >= 2150].min(initial=255) == 255
    assert ds.fingerprint != before.fingerprint
    button(at, "Back to the default window").click().run()
    assert at.session_state.dataset.window == before.window and not at.session_state.dataset.window_chosen


def test_a_link_that_locks_the_data_keeps_its_window_and_says_why():
    ds, report = data.load_zip(dicom_zip(per_class=5))
    at = fresh_app(query={"lock": "data"}, state={"dataset": ds, "dataset_label": "scans.zip", "load_report": report})
    open_page(at, "data")
    widget(at.slider, "Window centre").set_value(2000.0).run()
    widget(at.slider, "Window width").set_value(300.0).run()
    button(at, "Use this window").click().run()
    assert not at.exception, at.exception
    kept = at.session_state.dataset
    assert kept.fingerprint == ds.fingerprint and kept.window == ds.window and not kept.window_chosen
    assert any("link locks the dataset" in e and "window" in e for e in texts(at.error)), messages(at)
    assert "the default, 0.5–99.5 percentiles" in shown(at)  # the page shows the window still in use


def test_an_eight_bit_dataset_shows_no_window(app_data_page):
    assert "Window (images of more than 8 bits)" not in shown(app_data_page)


@pytest.fixture
def app_data_page():
    return open_page(fresh_app(), "data")


def test_the_session_keeps_no_patient_data_after_the_data_and_train_pages(dicom_page):
    import pickle

    at = open_page(dicom_page, "train")
    assert at.session_state.dataset.window is not None
    inner = at._session_state._state  # every value the session holds, widgets' included
    held = {**inner._old_state, **inner._new_session_state, **inner._new_widget_state}
    assert "dataset" in held
    for key, value in held.items():
        try:
            blob = pickle.dumps(value)
        except Exception:  # locks and the like: their text is all that could hold a name
            blob = repr(value).encode()
        assert DICOM_PATIENT.encode() not in blob and b"Zqxwv" not in blob, key
