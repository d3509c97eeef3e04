"""Lessons: Markdown files that declare an experiment, its expected outcome and the rule that checks it.

A lesson is a Markdown file in ``assets/lessons/`` with a TOML front-matter block between two
``+++`` lines (Hugo's convention; TOML because Python reads it without a dependency)::

    +++
    title = "Why pretrained weights?"
    order = 1
    expected = "The pretrained model beats the one from scratch by more than 10 points."
    rule = "pretrained.val_acc > scratch.val_acc + 0.1"

    [experiment]
    kind = "runs"            # training runs; or inside, saliency, shift, distill, tasks
    data = "demo:source"     # demo:source, demo:target or sample:<name> (core.data.samples)
    size = 64

    [[experiment.arms]]      # kind "runs" only: one training run each
    name = "pretrained"
    strategy = "feature_extraction"

    [[next]]                 # "what to try next": a page and a link's settings (core.links)
    label = "Train from scratch yourself"
    page = "train"
    link = "pretrained=0&strategy=full"
    +++
    The lesson's text, in Markdown.

``load_lessons`` never raises for one bad file: it returns the good lessons and, per broken file,
a ``LessonProblem`` whose message says what to fix, so a teacher's typo costs one lesson, not the page.
``check_outcome`` evaluates a lesson's rule on the experiment's results (``{name: {metric: value}}``).
"""

from __future__ import annotations

import ast
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from core import links
from core.errors import UserInputError

__all__ = ["LESSON_DIR", "PAGES", "RUN_METRICS", "ANALYSIS_RESULTS", "LessonError", "Arm", "Experiment", "NextStep",
           "Lesson", "LessonProblem", "Outcome", "parse_lesson", "load_lessons", "check_rule", "check_outcome"]

LESSON_DIR = Path(__file__).resolve().parents[2] / "assets" / "lessons"

# Pages a "what to try next" link may open (the url path of each page in app.py's menu).
PAGES = {"data": "Data", "model": "Model", "train": "Train", "features": "Feature maps", "saliency": "Saliency",
         "domain_shift": "Domain shift", "fewshot": "Few-shot", "evaluate": "Evaluate", "use_model": "Use the model",
         "microscope": "Microscope"}

# What a training run reports, for rules such as "pretrained.val_acc > scratch.val_acc + 0.1".
# cam_movement: how far the pinned validation images' Grad-CAMs moved from the first epoch to the last
# (core.train.watch.cam_movement), for an experiment with ``watch = N`` pinned images.
RUN_METRICS = ("val_acc", "train_acc", "val_loss", "train_loss", "epochs", "cam_movement")

# Lessons that show something a training run alone cannot (see LessonRun for what each one runs).
# Each names the results its rule may read ({name: metrics}); what runs directly is
# core.lessons.experiments.ANALYSES.
ANALYSIS_RESULTS: dict[str, dict[str, tuple[str, ...]]] = {
    "inside": {"first": ("change", "cka"), "last": ("change", "cka"), "model": ("val_acc",)},
    "saliency": {"gradient": ("start", "end"), "gradcam": ("start", "end")},
    "shift": {"shift": ("mmd2", "p_value"), "control": ("mmd2", "p_value"),
              "plain": ("target_acc", "mmd"), "dan": ("target_acc", "mmd")},
    "distill": {"teacher": ("val_acc",), "with_teacher": ("val_acc",), "without_teacher": ("val_acc",)},
    "tasks": {"shared": ("acc", "params"), "separate": ("acc", "params"),
              "pretrained": ("acc",), "scratch": ("acc",)},
}

_STRATEGIES = ("feature_extraction", "last_stage", "progressive", "full")
_DATA = re.compile(r"^(demo:(source|target)|sample:[a-z]+)$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


class LessonError(UserInputError):
    """A lesson file that cannot be used; the message names the file and what to fix."""


@dataclass(frozen=True)
class Arm:
    """One training run of a "runs" lesson."""

    name: str
    strategy: str = "feature_extraction"
    pretrained: bool = True
    epochs: int | None = None  # None: the experiment's
    label: str = ""


@dataclass(frozen=True)
class Experiment:
    kind: str
    data: str = "demo:source"
    per_class: int = 20
    backbone: str = "efficientnet_lite0"
    size: int = 64
    epochs: int = 3
    seed: int = 0
    arms: tuple[Arm, ...] = ()
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NextStep:
    """A "what to try next" link: a page and the settings a link to it carries (core.links)."""

    label: str
    page: str
    params: dict
    settings: dict


@dataclass(frozen=True)
class Lesson:
    slug: str
    title: str
    order: float
    body: str
    expected: str
    rule: str
    experiment: Experiment
    next_steps: tuple[NextStep, ...] = ()
    compare: str = ""  # what the lesson compares, in words


@dataclass(frozen=True)
class LessonProblem:
    file: str
    message: str


@dataclass(frozen=True)
class Outcome:
    matched: bool
    values: dict  # "name.metric" -> value the rule read


# --------------------------------------------------------------------------------------------- parsing


def _front_matter(text: str, name: str) -> tuple[dict, str]:
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "+++":
        raise LessonError(f"{name}: a lesson starts with a line '+++', then its settings, then another '+++'.")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "+++")
    except StopIteration:
        raise LessonError(f"{name}: the settings block opened by '+++' on line 1 is never closed: "
                          "add a line '+++' after the settings.") from None
    try:
        meta = tomllib.loads("\n".join(lines[1:end]))
    except tomllib.TOMLDecodeError as exc:
        # tomllib counts lines from the block's start: the file's line is one more
        where = re.search(r"line (\d+)", str(exc))
        detail = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        at = f" on line {int(where.group(1)) + 1}" if where else ""
        raise LessonError(f"{name}: the settings block cannot be read{at}: {detail}. "
                          'Text values need quotes, e.g. title = "My lesson".') from None
    return meta, "\n".join(lines[end + 1:]).strip()


def _get(table: Mapping, key: str, kind, name: str, where: str, default=...):
    if key not in table:
        if default is ...:
            raise LessonError(f"{name}: {where} needs '{key}'.")
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        wanted = {str: "text in quotes", int: "a whole number", float: "a number", bool: "true or false",
                  list: "a list", dict: "a table"}.get(kind, str(kind))
        raise LessonError(f"{name}: '{key}' in {where} must be {wanted}, not {value!r}.")
    return value


def _experiment(table: Mapping, name: str) -> Experiment:
    where = "[experiment]"
    kind = _get(table, "kind", str, name, where)
    if kind != "runs" and kind not in ANALYSIS_RESULTS:
        raise LessonError(f"{name}: experiment kind {kind!r} is unknown; use runs or one of "
                          f"{', '.join(ANALYSIS_RESULTS)}.")
    data = _get(table, "data", str, name, where, "demo:source")
    if not _DATA.match(data):
        raise LessonError(f"{name}: data = {data!r} is unknown; use demo:source, demo:target or sample:<name>.")
    size = _get(table, "size", int, name, where, 64)
    if not 32 <= size <= 224:
        raise LessonError(f"{name}: size = {size} is out of range; lessons use 32 to 224 pixels (64 is quick).")
    epochs = _get(table, "epochs", int, name, where, 3)
    per_class = _get(table, "per_class", int, name, where, 20)
    if not 1 <= epochs <= 100 or not 2 <= per_class <= 200:
        raise LessonError(f"{name}: epochs must be 1 to 100 and per_class 2 to 200.")
    arms = []
    for i, arm in enumerate(_get(table, "arms", list, name, where, [])):
        at = f"arm {i + 1} of [experiment]"
        if not isinstance(arm, dict):
            raise LessonError(f"{name}: {at} must be a [[experiment.arms]] table.")
        arm_name = _get(arm, "name", str, name, at)
        if not _NAME.match(arm_name):
            raise LessonError(f"{name}: arm name {arm_name!r} must be a short lower-case word (a-z, 0-9, _), "
                              "as the rule refers to it.")
        strategy = _get(arm, "strategy", str, name, at, "feature_extraction")
        if strategy not in _STRATEGIES:
            raise LessonError(f"{name}: strategy {strategy!r} of arm {arm_name} is unknown; use one of "
                              f"{', '.join(_STRATEGIES)}.")
        arm_epochs = _get(arm, "epochs", int, name, at, None)
        arms.append(Arm(arm_name, strategy, _get(arm, "pretrained", bool, name, at, True), arm_epochs,
                        _get(arm, "label", str, name, at, "")))
    if kind == "runs":
        if not arms:
            raise LessonError(f"{name}: an experiment of kind runs needs at least one [[experiment.arms]].")
        if len({a.name for a in arms}) < len(arms):
            raise LessonError(f"{name}: two arms have the same name; the rule could not tell them apart.")
    known = {"kind", "data", "size", "epochs", "per_class", "arms", "backbone", "seed"}
    return Experiment(kind=kind, data=data, per_class=per_class, size=size, epochs=epochs,
                      backbone=_get(table, "backbone", str, name, where, "efficientnet_lite0"),
                      seed=_get(table, "seed", int, name, where, 0), arms=tuple(arms),
                      options={k: v for k, v in table.items() if k not in known})


def _rule_names(experiment: Experiment) -> dict[str, tuple[str, ...]]:
    if experiment.kind == "runs":
        return {arm.name: RUN_METRICS for arm in experiment.arms}
    return ANALYSIS_RESULTS[experiment.kind]


class _RuleChecker(ast.NodeVisitor):
    """Only comparisons, arithmetic, and/or/not, numbers and ``name.metric`` reads."""

    ALLOWED = (ast.Expression, ast.Compare, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
               ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Constant, ast.Attribute, ast.Name, ast.Load,
               ast.Lt, ast.LtE, ast.Gt, ast.GtE)

    def __init__(self, names: Mapping[str, tuple[str, ...]], where: str):
        self.names, self.where, self.used = names, where, []

    def generic_visit(self, node):
        if not isinstance(node, self.ALLOWED):
            raise LessonError(f"{self.where}: the rule may use numbers, name.metric, + - * /, < <= > >=, "
                              f"and, or, not — not {type(node).__name__}.")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or
                                               not isinstance(node.value, (int, float))):
            raise LessonError(f"{self.where}: the rule's values must be numbers, not {node.value!r}.")
        if isinstance(node, ast.Name):
            raise LessonError(f"{self.where}: '{node.id}' in the rule needs a metric, e.g. {node.id}.val_acc.")
        if isinstance(node, ast.Attribute):
            if not isinstance(node.value, ast.Name):
                raise LessonError(f"{self.where}: write name.metric in the rule.")
            name, metric = node.value.id, node.attr
            if name not in self.names:
                raise LessonError(f"{self.where}: the rule reads '{name}', but this experiment has only "
                                  f"{', '.join(self.names)}.")
            if metric not in self.names[name]:
                raise LessonError(f"{self.where}: '{name}' has no metric '{metric}'; use one of "
                                  f"{', '.join(self.names[name])}.")
            self.used.append(f"{name}.{metric}")
            return
        super().generic_visit(node)


def _parse_rule(rule: str, names: Mapping[str, tuple[str, ...]], where: str) -> ast.Expression:
    try:
        tree = ast.parse(rule.strip(), mode="eval")
    except SyntaxError as exc:
        raise LessonError(f"{where}: the rule {rule!r} cannot be read ({exc.msg}); "
                          "write e.g. pretrained.val_acc > scratch.val_acc + 0.1.") from None
    checker = _RuleChecker(names, where)
    checker.visit(tree)
    return tree


def _next_steps(items, name: str) -> tuple[NextStep, ...]:
    steps = []
    for i, item in enumerate(items):
        at = f"link {i + 1} ([[next]])"
        if not isinstance(item, dict):
            raise LessonError(f"{name}: {at} must be a [[next]] table.")
        page = _get(item, "page", str, name, at)
        if page not in PAGES:
            raise LessonError(f"{name}: {at} opens page {page!r}; use one of {', '.join(PAGES)}.")
        query = _get(item, "link", str, name, at, "").lstrip("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        settings, notes = links.decode(params)
        if notes:
            raise LessonError(f"{name}: {at}: " + " ".join(notes))
        steps.append(NextStep(_get(item, "label", str, name, at, f"Open {PAGES[page]}"), page, params, settings))
    return tuple(steps)


def parse_lesson(text: str, name: str = "lesson.md") -> Lesson:
    """One lesson from its file's text; LessonError (naming ``name``) for anything that cannot be used."""
    meta, body = _front_matter(text, name)
    title = _get(meta, "title", str, name, "the settings")
    experiment = _experiment(_get(meta, "experiment", dict, name, "the settings"), name)
    rule = _get(meta, "rule", str, name, "the settings")
    _parse_rule(rule, _rule_names(experiment), name)
    if not body:
        raise LessonError(f"{name}: the lesson has no text after its settings block.")
    return Lesson(slug=Path(name).stem, title=title, order=_get(meta, "order", float, name, "the settings", 99.0),
                  body=body, expected=_get(meta, "expected", str, name, "the settings"), rule=rule,
                  experiment=experiment, next_steps=_next_steps(_get(meta, "next", list, name, "the settings", []), name),
                  compare=_get(meta, "compare", str, name, "the settings", ""))


def load_lessons(folder: str | Path = LESSON_DIR) -> tuple[list[Lesson], list[LessonProblem]]:
    """Every ``*.md`` lesson in ``folder`` in their ``order``, and a problem per file that cannot be used."""
    lessons, problems = [], []
    for path in sorted(Path(folder).glob("*.md")):
        try:
            lessons.append(parse_lesson(path.read_text(encoding="utf-8"), path.name))
        except LessonError as exc:
            problems.append(LessonProblem(path.name, str(exc)))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(LessonProblem(path.name, f"{path.name}: the file cannot be read as UTF-8 text ({exc})."))
    lessons.sort(key=lambda lesson: (lesson.order, lesson.slug))
    return lessons, problems


# --------------------------------------------------------------------------------------------- outcomes

_OPS = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
        ast.GtE: lambda a, b: a >= b}
_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b if b else math.nan}


def _evaluate(node, results: Mapping, values: dict):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, results, values)
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Attribute):
        key = f"{node.value.id}.{node.attr}"
        try:
            value = float(results[node.value.id][node.attr])
        except (KeyError, TypeError, ValueError):
            value = math.nan
        values[key] = value
        return value
    if isinstance(node, ast.UnaryOp):
        inner = _evaluate(node.operand, results, values)
        return (not inner) if isinstance(node.op, ast.Not) else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.BinOp):
        return _ARITH[type(node.op)](_evaluate(node.left, results, values), _evaluate(node.right, results, values))
    if isinstance(node, ast.BoolOp):
        parts = [bool(_evaluate(v, results, values)) for v in node.values]  # every value read, for the display
        return all(parts) if isinstance(node.op, ast.And) else any(parts)
    if isinstance(node, ast.Compare):
        left, ok = _evaluate(node.left, results, values), True
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, results, values)
            ok = ok and _OPS[type(op)](left, right)  # a missing value (nan) compares False: no match
            left = right
        return ok
    raise LessonError(f"The rule holds a {type(node).__name__}, which lessons cannot evaluate.")


def check_rule(rule: str, results: Mapping[str, Mapping[str, float]]) -> Outcome:
    """Evaluate ``rule`` on ``results`` ({name: {metric: value}}); a missing value never matches."""
    names = {name: tuple(metrics) for name, metrics in results.items()}
    tree = _parse_rule(rule, names, "rule")
    values: dict = {}
    matched = bool(_evaluate(tree, results, values))
    return Outcome(matched, values)


def check_outcome(lesson: Lesson, results: Mapping[str, Mapping[str, float]]) -> Outcome:
    """The lesson's rule on its experiment's results."""
    names = _rule_names(lesson.experiment)
    tree = _parse_rule(lesson.rule, names, lesson.slug)
    values: dict = {}
    return Outcome(bool(_evaluate(tree, results, values)), values)


# --------------------------------------------------------------------------------------------- experiments
