"""Lessons: one idea of transfer learning at a time, each with an experiment that runs itself."""

import streamlit as st

from core import lessons as core_lessons
from core.errors import UserInputError
from core.links import LOCKABLE
from core.runs.tasks import get_queue
from pages.ui.links import STRATEGY_LABELS, apply_settings
from pages.ui.runs import run_store
from pages.ui.session import bootstrap, demo, select_run
from pages.ui.tasks import follow
from pages.ui.text import plain
from pages.ui.workspace import ModelChoice, Workspace, workspace

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


def lesson_workspace(lesson) -> Workspace:
    """The lesson's own workspace: its data, model and first arm's settings, apart from the person's,
    so running a lesson never changes what they work with."""
    experiment = lesson.experiment
    ds, label = lesson_data(experiment)(experiment.data)
    arm = experiment.arms[0] if experiment.arms else core_lessons.Arm(name="model")
    strategy = STRATEGY_LABELS[arm.strategy]
    config = core_lessons.arm_config(experiment, arm)
    model = ModelChoice(backbone=experiment.backbone, pretrained=arm.pretrained, strategy=strategy,
                        freeze=list(config.freeze), lr_multipliers=dict(config.lr_multipliers),
                        unfreeze_every=config.unfreeze_every)
    return Workspace.detached(ds, label, model, config)


def start(lesson) -> None:
    """Queue the lesson's runs (as far as this person's share of the queue allows: the rest start
    while it is followed below) or its analysis, in the lesson's own workspace."""
    experiment = lesson.experiment
    run = core_lessons.LessonRun(lesson, run_store(), owner=ss.owner, queue=get_queue(),
                                  dataset=lesson_data(experiment))
    run.poll()
    if not run.jobs:
        raise UserInputError(" ".join(run.errors.values()) or get_queue().full_message())
    own = lesson_workspace(lesson)
    own.select_run(next(iter(run.run_ids().values()), None))
    state[lesson.slug] = {"run": run, "result": None, "workspace": own}


def continue_ui(lesson) -> None:
    """Copy the lesson's setup into the person's workspace, only when asked (through its locks)."""
    own = state.get(lesson.slug, {}).get("workspace")
    if own is None or own.model is None:
        return
    if st.button("Continue with this setup", icon=":material/input:", key=f"adopt-{lesson.slug}",
                 help=f"Makes {own.dataset_label}, {own.model.backbone} and {own.model.strategy} yours on the "
                      "other pages, and opens the lesson's run on the Train page. Your own data and settings "
                      "are replaced."):
        refused = workspace().adopt(own)
        select_run(own.current_run)
        if refused:
            ss.link_note = (f"Your link locks {', '.join(LOCKABLE.get(r, r) for r in refused)}: the lesson's "
                            "value was not taken for those, the rest of its setup was.")
        st.switch_page("pages/train.py")
    st.caption("Your own data, settings and runs are untouched by the lesson until you continue with its setup.")


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


def result_table(lesson, result) -> None:
    """The experiment's numbers, under the outcome and as wide as the lesson: an analysis's rows, or a
    column per run and a row per measure (a row per run, six measures wide, was cut on a projector)."""
    if result.get("rows"):
        st.dataframe(result["rows"], hide_index=True)
    elif lesson.experiment.kind == "runs" and result.get("results"):
        runs = result["results"]
        measures = dict.fromkeys(name for metrics in runs.values() for name in metrics)
        st.dataframe([{"measure": m, **{run: fmt(metrics.get(m, float("nan"))) for run, metrics in runs.items()}}
                      for m in measures], hide_index=True)


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
            refused = apply_settings(step.settings)
            if refused:
                ss.link_note = f"Your link locks {', '.join(LOCKABLE.get(r, r) for r in refused)}: kept as it was."
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
    if not going and entry is not None and entry.get("result") is not None:
        result_table(lesson, entry["result"])
    if st.button("Run this experiment", type="primary", icon=":material/play_arrow:", key=f"run-{slug}",
                 disabled=going, help=f"{experiment.data}, {experiment.size} px, seed {experiment.seed}"):
        try:
            start(lesson)
        except UserInputError as exc:
            st.error(plain(exc))
        else:
            st.rerun()
    continue_ui(lesson)
    next_steps_ui(lesson)
