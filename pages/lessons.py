"""Lessons: one idea of transfer learning at a time, each with an experiment that runs itself."""

import streamlit as st

from core import lessons as core_lessons
from core.errors import UserInputError
from core.runs.tasks import get_queue
from pages.ui.links import STRATEGY_LABELS, apply_settings
from pages.ui.models import ModelChoice, preset_freeze
from pages.ui.runs import run_store
from pages.ui.session import bootstrap, demo, select_run
from pages.ui.tasks import follow
from pages.ui.text import plain

bootstrap()  # first, before the session is read: see bootstrap's docstring

ss = st.session_state
st.title("Lessons")
st.caption("Each lesson says what should happen before it runs; then run it and see whether it does. "
           "Lesson texts are Markdown files in assets/lessons/: edit them or add your own.")

found, problems = core_lessons.load_lessons(core_lessons.LESSON_DIR)
for problem in problems:
    st.warning(f"A lesson could not be shown. {plain(problem.message)}", icon=":material/edit_note:")
if not found:
    st.info("There are no lessons to show: add Markdown files to assets/lessons/.")
    st.stop()

by_slug = {lesson.slug: lesson for lesson in found}
state = ss.setdefault("lesson_state", {})  # slug -> the experiment started from this browser


def lesson_name(slug: str) -> str:
    index = list(by_slug).index(slug) + 1
    return f"{index}. {by_slug[slug].title}"


# --- starting an experiment --------------------------------------------------------------------------------


def lesson_data(experiment):
    """``spec -> (images, label)`` for a lesson's data specs: the app's own cached demo sets, so the
    sidebar and the Data page show the very images the lesson trained on."""

    def load(spec: str):
        source, _, name = spec.partition(":")
        if source == "demo":
            return demo(name, experiment.per_class, experiment.seed), f"Demo shapes ({name} look)"
        return core_lessons.lesson_dataset(experiment)

    return load


def use_setup(lesson) -> None:
    """The lesson's data and model become this session's, so the other pages continue from them."""
    experiment = lesson.experiment
    ds, label = lesson_data(experiment)(experiment.data)
    ss.dataset, ss.dataset_label, ss.load_report = ds, label, None
    if experiment.arms:
        arm = experiment.arms[0]
        strategy = STRATEGY_LABELS[arm.strategy]
        ss.model_choice = ModelChoice(backbone=experiment.backbone, pretrained=arm.pretrained, strategy=strategy,
                                      freeze=preset_freeze(strategy, _groups(experiment.backbone)),
                                      unfreeze_every=1 if arm.strategy == "progressive" else 0)


def _groups(backbone: str) -> list[str]:
    from core import models

    return models.group_names(backbone)


def start(lesson) -> None:
    """Queue the lesson's runs (as far as this person's share of the queue allows: the rest start
    while it is followed below) or its analysis."""
    experiment = lesson.experiment
    if experiment.kind == "runs":
        use_setup(lesson)
    run = core_lessons.LessonRun(lesson, run_store(), owner=ss.owner, queue=get_queue(),
                                  dataset=lesson_data(experiment))
    run.poll()
    if not run.jobs:
        raise UserInputError(" ".join(run.errors.values()) or get_queue().full_message())
    if experiment.kind == "runs":
        select_run(next(iter(run.run_ids().values())))  # the Train page opens on the lesson's first run
    state[lesson.slug] = {"run": run, "result": None}


# --- following it -------------------------------------------------------------------------------------------


def poll(lesson, entry) -> bool:
    """Bring ``entry`` up to date; True while the experiment is still going."""
    if entry.get("result") is not None:
        return False
    run = entry["run"]
    if run.poll():
        return True
    entry["result"] = run.result
    entry.pop("run")  # the finished parts hold nothing the page still needs
    return False


def progress_ui(lesson, entry) -> None:
    fraction, text = entry["run"].progress()
    st.progress(fraction, text=f"Running… {text}")
    if st.button("Stop", icon=":material/stop:", key=f"lesson-stop-{lesson.slug}"):
        entry["run"].cancel()


def fmt(value: float) -> str:
    if value != value:
        return "—"
    return f"{value:.3g}" if abs(value) < 0.001 or abs(value) >= 1 else f"{value:.2f}"


def outcome_ui(lesson, result) -> None:
    if result.get("error") and "results" not in result:
        st.error(f"The experiment did not finish: {plain(result['error'])}")
        return
    outcome = core_lessons.check_outcome(lesson, result["results"])
    values = ", ".join(f"{name} = {fmt(v)}" for name, v in outcome.values.items())
    took = f"Ran in {result['seconds']:.0f} s."
    if outcome.matched:
        st.success(f"**Outcome: as expected.** {values}. {took}", icon=":material/check_circle:")
    else:
        st.warning(f"**Outcome: not as expected.** {values} (the rule: `{lesson.rule}`). {took} "
                   "A small experiment can land either way: try another seed or more epochs from the links below, "
                   "and ask why.", icon=":material/help:")
    if result.get("error"):
        st.caption(f"Some runs did not finish normally: {plain(result['error'])}")
    if result.get("rows"):
        st.dataframe(result["rows"], hide_index=True)
    elif lesson.experiment.kind == "runs":
        st.dataframe([{"run": name, **{k: v for k, v in metrics.items()}}
                      for name, metrics in result["results"].items()], hide_index=True)


def results_ui(lesson) -> None:
    entry = state.get(lesson.slug)
    if entry is None:
        st.caption("Not run yet in this browser.")
        return
    running = poll(lesson, entry)
    if running:
        progress_ui(lesson, entry)
    else:
        outcome_ui(lesson, entry["result"])


def live_results(slug: str) -> bool:
    """The experiment's progress, then its outcome (``follow``'s draw): True while it is going."""
    results_ui(by_slug[slug])
    entry = state.get(slug)
    return entry is not None and entry.get("result") is None


# --- what to try next ----------------------------------------------------------------------------------------


def next_steps_ui(lesson) -> None:
    if not lesson.next_steps:
        return
    st.markdown("**What to try next**")
    for i, step in enumerate(lesson.next_steps):
        query = "&".join(f"{k}={v}" for k, v in step.params.items())
        if st.button(f"{step.label} → {core_lessons.PAGES[step.page]}", key=f"next-{lesson.slug}-{i}",
                     icon=":material/arrow_forward:", help=f"Opens {core_lessons.PAGES[step.page]} with "
                                                           f"{query or 'the default settings'}."):
            apply_settings(step.settings)
            st.switch_page(f"pages/{step.page}.py")


# --- the page -------------------------------------------------------------------------------------------------

pick, main = st.columns([1, 3], gap="large")
with pick:
    slug = st.radio("Lesson", list(by_slug), format_func=lesson_name, key="lesson-pick")
lesson = by_slug[slug]
with main:
    st.header(lesson_name(slug))
    st.markdown(lesson.body)
    experiment = lesson.experiment
    if lesson.compare:
        st.caption(f":material/science: {lesson.compare}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Expected** (written before the run)")
        st.info(lesson.expected, icon=":material/lightbulb:")
    with right:
        st.markdown("**What happened**")
        entry = state.get(slug)
        going = entry is not None and entry.get("result") is None
        if going:
            follow(live_results, slug, live=True)
        else:
            results_ui(lesson)
    if st.button("Run this experiment", type="primary", icon=":material/play_arrow:", key=f"run-{slug}",
                 disabled=going, help=f"{experiment.data}, {experiment.size} px, seed {experiment.seed}"):
        try:
            start(lesson)
        except UserInputError as exc:
            st.error(plain(exc))
        else:
            st.rerun()
    next_steps_ui(lesson)
