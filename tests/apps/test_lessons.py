"""Lesson files: reading a teacher's Markdown, clear errors for a broken one, and the outcome rules."""

import math

import pytest

from core import lessons
from core.lessons import LessonError, check_outcome, check_rule, load_lessons, parse_lesson

GOOD = '''+++
title = "Why pretrained weights?"
order = 1
expected = "Pretrained wins."
rule = "pretrained.val_acc > scratch.val_acc + 0.1"

[experiment]
kind = "runs"
size = 64

[[experiment.arms]]
name = "pretrained"

[[experiment.arms]]
name = "scratch"
strategy = "full"
pretrained = false
epochs = 4

[[next]]
label = "Train from scratch"
page = "train"
link = "pretrained=0&strategy=full&epochs=5"
+++
Some **Markdown** text.
'''


def lesson_with(**changes) -> str:
    text = GOOD
    for old, new in changes.items():
        old = old.replace("_", " ") if old != "rule_line" else 'rule = "pretrained.val_acc > scratch.val_acc + 0.1"'
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_a_lesson_file_gives_its_text_experiment_rule_and_links():
    lesson = parse_lesson(GOOD, "01-why.md")
    assert lesson.slug == "01-why" and lesson.title == "Why pretrained weights?"
    assert lesson.body == "Some **Markdown** text."
    assert [a.name for a in lesson.experiment.arms] == ["pretrained", "scratch"]
    scratch = lesson.experiment.arms[1]
    assert (scratch.strategy, scratch.pretrained, scratch.epochs) == ("full", False, 4)
    step = lesson.next_steps[0]
    assert step.page == "train"
    assert step.settings == {"pretrained": False, "strategy": "full", "epochs": 5}


@pytest.mark.parametrize("text, says", [
    ("no front matter\n", "starts with a line '+++'"),
    ("+++\ntitle = 'x'\n", "never closed"),
    (GOOD.replace('title = "Why pretrained weights?"', "title = Why pretrained"), "on line 2"),
    (GOOD.replace('kind = "runs"', 'kind = "magic"'), "kind 'magic' is unknown"),
    (GOOD.replace('scratch.val_acc + 0.1"', 'scrach.val_acc + 0.1"'), "reads 'scrach'"),
    (GOOD.replace('scratch.val_acc + 0.1"', 'scratch.accuracy"'), "no metric 'accuracy'"),
    (GOOD.replace('scratch.val_acc + 0.1"', '__import__(1)"'), "not Call"),
    (GOOD.replace('scratch.val_acc + 0.1"', 'scratch.val_acc +"'), "cannot be read"),
    (GOOD.replace('page = "train"', 'page = "nowhere"'), "opens page 'nowhere'"),
    (GOOD.replace("epochs=5", "epochs=many"), "Ignored epochs=many"),
    (GOOD.replace("size = 64", "size = 4096"), "size = 4096 is out of range"),
    (GOOD.replace("size = 64", 'size = "big"'), "must be a whole number"),
    (GOOD.replace('strategy = "full"', 'strategy = "everything"'), "strategy 'everything'"),
    (GOOD.replace('name = "scratch"', 'name = "pretrained"'), "same name"),
    (GOOD.split("+++\nSome")[0] + "+++\n", "no text"),
])
def test_a_broken_lesson_file_says_what_to_fix(text, says):
    with pytest.raises(LessonError, match="^bad.md: ") as caught:
        parse_lesson(text, "bad.md")
    assert says in str(caught.value)


def test_one_broken_file_costs_one_lesson_not_the_list(tmp_path):
    (tmp_path / "b.md").write_text(GOOD.replace("order = 1", "order = 2"))
    (tmp_path / "a.md").write_text(GOOD.replace("order = 1", "order = 3").replace("Why", "Later"))
    (tmp_path / "c.md").write_text("+++\ntitle = \n+++\ntext")
    (tmp_path / "d.md").write_bytes(b"\xff\xfe not utf-8")
    found, problems = load_lessons(tmp_path)
    assert [lesson.slug for lesson in found] == ["b", "a"]  # by their order, not their file names
    assert sorted(p.file for p in problems) == ["c.md", "d.md"]


def test_every_shipped_lesson_reads_without_a_problem():
    found, problems = load_lessons()
    assert problems == []
    assert len(found) >= 7
    assert [lesson.order for lesson in found] == sorted(lesson.order for lesson in found)
    kinds = {lesson.experiment.kind for lesson in found}
    assert {"runs", "inside", "saliency", "shift", "distill", "tasks"} <= kinds
    assert all(lesson.expected and lesson.next_steps for lesson in found)


def test_a_rule_matches_only_when_it_holds():
    rule = "pretrained.val_acc > scratch.val_acc + 0.1"
    assert check_rule(rule, {"pretrained": {"val_acc": 0.9}, "scratch": {"val_acc": 0.5}}).matched
    assert not check_rule(rule, {"pretrained": {"val_acc": 0.55}, "scratch": {"val_acc": 0.5}}).matched
    outcome = check_rule(rule, {"pretrained": {"val_acc": 0.9}, "scratch": {"val_acc": 0.5}})
    assert outcome.values == {"pretrained.val_acc": 0.9, "scratch.val_acc": 0.5}


def test_and_or_not_and_chained_comparisons_follow_python():
    r = {"a": {"x": 1.0}, "b": {"x": 2.0}}
    assert check_rule("a.x < b.x and not b.x < a.x", r).matched
    assert check_rule("a.x > b.x or b.x / a.x >= 2", r).matched
    assert not check_rule("0 < a.x < b.x - 1.5", r).matched
    assert check_rule("-a.x * 2 <= -b.x", r).matched


def test_a_missing_or_undefined_value_never_matches():
    r = {"a": {"x": float("nan")}, "b": {"x": 0.0}}
    assert not check_rule("a.x > b.x", r).matched
    assert not check_rule("a.x <= b.x", r).matched
    assert not check_rule("b.x / b.x > -1", r).matched  # 0/0 is undefined, not an error
    lesson = parse_lesson(GOOD)
    assert not check_outcome(lesson, {"pretrained": {"val_acc": 0.9}}).matched  # scratch never finished
    assert math.isnan(check_outcome(lesson, {"pretrained": {"val_acc": 0.9}}).values["scratch.val_acc"])


def test_run_results_read_the_epoch_each_arm_keeps_not_its_best_or_last():
    class Record:
        def __init__(self, accs, kept=None):
            self.epochs = [{"epoch": n, "val_acc": a, "train_acc": 1.0, "val_loss": 1 - a, "train_loss": 0.1}
                           for n, a in enumerate(accs, start=1)]
            self.info = {"kept_epoch": kept} if kept else {}
            self.status, self.config = "finished", {}

    results = lessons.run_results({"pretrained": Record([0.5, 0.7, 0.9, 0.8], kept=2),
                                   "plain": Record([0.5, 0.9, 0.8]), "scratch": Record([])})
    # early stopping kept epoch 2 (lowest validation loss in its run): the lesson judges that model
    assert results["pretrained"]["val_acc"] == 0.7 and results["pretrained"]["val_loss"] == pytest.approx(0.3)
    assert results["pretrained"]["epochs"] == 4
    assert results["plain"]["val_acc"] == 0.8  # no early stopping: the last epoch's weights are the model
    assert results["scratch"] == {}


def test_an_arm_trains_with_its_strategys_preset_at_the_lessons_size_and_epochs():
    lesson = parse_lesson(GOOD)
    pretrained, scratch = lesson.experiment.arms
    extract = lessons.arm_config(lesson.experiment, pretrained)
    full = lessons.arm_config(lesson.experiment, scratch)
    assert extract.image_size == full.image_size == 64
    assert full.epochs == 4 and full.freeze == [] and extract.freeze  # the backbone is frozen
    assert extract.epochs == lesson.experiment.epochs


def test_a_lesson_can_pin_images_and_its_rule_reads_how_far_their_attention_moved():
    lesson = parse_lesson(GOOD.replace("size = 64", "size = 64\nwatch = 3"))
    assert lessons.arm_config(lesson.experiment, lesson.experiment.arms[0]).watch == (0, 1, 2)

    class Record:
        epochs = [{"epoch": 1, "val_acc": 0.9, "train_acc": 1.0, "val_loss": 0.1, "train_loss": 0.1}]
        status, config = "finished", {}

        def __init__(self, moved):
            self.info = {"cam_movement": moved}

    results = lessons.run_results({"extract": Record(0.01), "fine_tune": Record(0.6)})
    assert results["fine_tune"]["cam_movement"] == 0.6
    watching = next(lesson for lesson in load_lessons()[0] if lesson.title == "Watching it learn")
    assert check_outcome(watching, results).matched
    assert not check_outcome(watching, {"extract": {"cam_movement": 0.3}, "fine_tune": {"cam_movement": 0.4}}).matched
