"""Lessons that train do so through the queue and the worker kinds, and read their outcome from the runs' records."""

import time

import pytest

from core import lessons
from core.lessons import LessonRun, parse_lesson
from core.runs.tasks import TaskQueue

OWNER = "b" * 16




def tiny(kind: str, rule: str, extra: str = "") -> lessons.Lesson:
    return parse_lesson(f'''+++
title = "Tiny {kind}"
order = 9
expected = "Something."
rule = "{rule}"

[experiment]
kind = "{kind}"
size = 32
epochs = 1
per_class = 4
{extra}
+++
Text.
''', f"09-{kind}.md")


def follow(run: LessonRun, timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while run.poll():
        assert time.monotonic() < deadline, f"still going: {run.progress()}"
        time.sleep(0.1)
    return run.result


def test_a_distillation_lesson_trains_a_teacher_run_then_a_distill_run_and_reads_both_records(store, pool):
    lesson = tiny("distill", "with_teacher.val_acc >= 0", 'teacher_epochs = 1\nstudent_size = 32\ntemperature = 2.0')
    # one slot and room for one run of this person: the students must wait for the teacher anyway
    run = LessonRun(lesson, store, owner=OWNER, queue=TaskQueue(1, per_person=1, pool=pool))
    result = follow(run)
    assert result["error"] == "", result
    kinds = {name: store.get(run_id).config.get("kind", "train") for name, run_id in run.run_ids().items()}
    assert kinds == {"teacher": "train", "students": "distill"}
    students = store.get(run.run_ids()["students"])
    assert students.config["teacher"] == run.run_ids()["teacher"]
    values = result["results"]
    assert set(values) == {"teacher", "with_teacher", "without_teacher"}
    assert values["teacher"]["val_acc"] == max(e["val_acc"] for e in store.get(run.run_ids()["teacher"]).epochs)
    assert values["with_teacher"]["val_acc"] == max(e["val_acc"] for e in students.info["arms"]["with teacher"]["epochs"])
    assert lessons.check_outcome(lesson, values).matched


def test_a_domain_shift_lesson_queues_a_dan_comparison_beside_its_measurement(store, pool):
    lesson = tiny("shift", "dan.target_acc >= 0 and shift.p_value <= 1", "permutations = 20")
    run = LessonRun(lesson, store, owner=OWNER, queue=TaskQueue(1, per_person=2, pool=pool))
    result = follow(run)
    assert result["error"] == "", result
    (name, run_id), = run.run_ids().items()
    record = store.get(run_id)
    assert name == "dan" and record.config["kind"] == "dan"
    arms = record.info["arms"]
    assert result["results"]["dan"]["target_acc"] == arms["DAN"]["epochs"][-1]["target_acc"]
    assert set(result["results"]) == {"shift", "control", "plain", "dan"}
    assert lessons.check_outcome(lesson, result["results"]).matched


def test_stopping_a_lesson_cancels_its_runs_and_starts_nothing_more(store, pool):
    lesson = tiny("distill", "with_teacher.val_acc >= 0", "teacher_epochs = 30")
    run = LessonRun(lesson, store, owner=OWNER, queue=TaskQueue(1, per_person=2, pool=pool))
    assert run.poll()
    run.cancel()
    result = follow(run, 120)
    assert "stopped" in result["error"]
    assert list(run.run_ids()) == ["teacher"]  # the students never started
    assert store.get(run.run_ids()["teacher"]).status == "cancelled"


def test_the_inside_lesson_fine_tunes_in_a_run_then_compares_its_saved_start_and_end(store, pool):
    lesson = tiny("inside", "last.change > first.change and model.val_acc >= 0")
    run = LessonRun(lesson, store, owner=OWNER, queue=TaskQueue(1, per_person=2, pool=pool))
    result = follow(run)
    assert result["error"] == "", result
    (name, run_id), = run.run_ids().items()
    record = store.get(run_id)
    assert name == "model" and record.config.get("kind", "train") == "train" and record.config["freeze"] == []
    values = result["results"]
    assert values["model"]["val_acc"] == max(e["val_acc"] for e in record.epochs)
    assert values["first"]["change"] > 0 and 0 < values["last"]["cka"] <= 1.0001
    assert [row["group"] for row in result["rows"]][0] == "stem"


def test_the_tasks_lesson_trains_the_shared_model_and_each_separate_one_as_multitask_runs(store, pool):
    from core.data.demo import DEMO_TASKS

    lesson = tiny("tasks", "shared.acc >= 0 and separate.acc >= 0 and pretrained.acc >= 0",
                  "episodes = 2\nclasses = 6\nn_way = 3\nk_shot = 2\nfewshot_per_class = 10")
    run = LessonRun(lesson, store, owner=OWNER, queue=TaskQueue(1, per_person=2, pool=pool))
    result = follow(run)
    assert result["error"] == "", result
    records = {name: store.get(run_id) for name, run_id in run.run_ids().items()}
    assert set(records) == {"shared", *(f"alone:{task}" for task in DEMO_TASKS)}
    assert {record.config["kind"] for record in records.values()} == {"multitask"}
    assert records["shared"].config["tasks"] == DEMO_TASKS
    for task, classes in DEMO_TASKS.items():
        assert records[f"alone:{task}"].config["tasks"] == {task: classes}
    # the outcome is the runs' records: each task's accuracy at the epoch the run kept (here the last)
    values = result["results"]
    shared = records["shared"].epochs[-1]["val_acc_by_task"]
    assert values["shared"]["acc"] == pytest.approx(sum(shared.values()) / len(shared))
    separate = [records[f"alone:{task}"].epochs[-1]["val_acc_by_task"][task] for task in DEMO_TASKS]
    assert values["separate"]["acc"] == pytest.approx(sum(separate) / len(separate))
    assert records["shared"].epochs[-1]["grad_cosine"] == []  # no gradient-conflict batches: accuracy is all it reads
    # three backbones against one with three heads
    assert 2 * values["shared"]["params"] < values["separate"]["params"]
    assert set(values) == {"shared", "separate", "pretrained", "scratch"}
    assert [row["what"] for row in result["rows"]][:3] == [f"task {task}: shared / separate" for task in DEMO_TASKS]
    assert lessons.check_outcome(lesson, values).matched
