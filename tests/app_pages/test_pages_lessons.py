"""The Lessons page, driven through Streamlit's AppTest (no browser)."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import lessons

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def open_lessons():
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/lessons.py").run()
    return at


def test_the_lessons_page_lists_every_lesson_of_assets_lessons_in_order():
    at = open_lessons()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Lessons"]
    found, _ = lessons.load_lessons()
    pick = at.radio(key="lesson-pick")
    assert [option.split(". ", 1)[1] for option in pick.options] == [lesson.title for lesson in found]
    assert at.header[0].value == f"1. {found[0].title}"
    assert any(found[0].expected in info.value for info in at.info)
    pick.set_value(found[1].slug).run()
    assert at.header[0].value == f"2. {found[1].title}"
    assert [b.label for b in at.button if b.label == "Run this experiment"]


def test_a_broken_lesson_file_shows_a_note_and_the_others_still_show(tmp_path, monkeypatch):
    good = (lessons.LESSON_DIR / "01-why-pretrained.md").read_text()
    (tmp_path / "01-good.md").write_text(good)
    (tmp_path / "02-broken.md").write_text(good.replace('kind = "runs"', 'kind = "magic"'))
    monkeypatch.setattr(lessons, "LESSON_DIR", tmp_path)
    at = open_lessons()
    assert not at.exception, at.exception
    assert len(at.radio(key="lesson-pick").options) == 1
    notes = " ".join(w.value for w in at.warning)
    assert "02-broken.md" in notes and "kind 'magic' is unknown" in notes


def test_lessons_come_first_in_the_menu_and_the_app_still_opens_on_data():
    menu = Path(APP).read_text().split("pages = {", 1)[1]  # the menu, in the order it is drawn
    assert menu.index('"pages/lessons.py"') < menu.index("DATA_PAGE")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Data"]


def test_a_next_step_link_applies_its_settings_and_opens_its_page():
    at = open_lessons()
    assert [t.value for t in at.title] == ["Lessons"]
    step = [b for b in at.button if "→ Train" in b.label][0]
    step.click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Train"]
    found, _ = lessons.load_lessons()
    settings = next(s for s in found[0].next_steps if s.page == "train").settings
    assert at.session_state.train_config.epochs == settings["epochs"]
    assert at.session_state.model_choice.strategy == "Fine-tune all"


def run_lesson_of_kind(kind: str):
    """Open Lessons, pick the lesson whose experiment is of ``kind`` and press "Run this experiment"."""
    from tests.app_pages.pages_helpers import texts

    at = open_lessons()
    found, _ = lessons.load_lessons()
    lesson = next(x for x in found if x.experiment.kind == kind)
    at.radio(key="lesson-pick").set_value(lesson.slug).run()
    [b for b in at.button if b.label == "Run this experiment"][0].click().run()
    assert not at.exception and not at.error, texts(at.error)
    return at, lesson


def test_a_distillation_lesson_shows_its_runs_progress_and_stops_them():
    from core.runs import RunStore
    from core.settings import get_settings
    from tests.app_pages.pages_helpers import texts, wait_for

    at, lesson = run_lesson_of_kind("distill")
    progress = " ".join(p.proto.text for p in at.get("progress"))
    assert "teacher:" in progress and "students: waiting" in progress  # the students wait for their teacher
    at.button(key=f"lesson-stop-{lesson.slug}").click().run()
    wait_for(at, lambda at: any("stopped the experiment" in e for e in texts(at.error)), 120)
    runs = RunStore(get_settings().data_dir).list()
    assert [r.label for r in runs] == [f"Lesson {lesson.order:g}: the teacher"]  # the students never started
    assert runs[0].status == "cancelled"


def test_the_tasks_lesson_queues_its_models_as_runs_shows_each_ones_progress_and_stops_them():
    from core.runs import RunStore
    from core.settings import get_settings
    from tests.app_pages.pages_helpers import texts, wait_for

    at, lesson = run_lesson_of_kind("tasks")
    progress = " ".join(p.proto.text for p in at.get("progress"))
    # two runs fill this person's share of the queue: the others wait for room
    assert "shared model:" in progress and "shape alone:" in progress, progress
    assert "size alone: waiting" in progress and "few-shot: waiting" in progress, progress
    at.button(key=f"lesson-stop-{lesson.slug}").click().run()
    wait_for(at, lambda at: any("stopped the experiment" in e for e in texts(at.error)), 120)
    runs = RunStore(get_settings().data_dir).list()
    assert sorted(r.label for r in runs) == [f"Lesson {lesson.order:g}: a model for shape alone",
                                            f"Lesson {lesson.order:g}: one model for every task"]
    assert {(r.config["kind"], r.status) for r in runs} == {("multitask", "cancelled")}
