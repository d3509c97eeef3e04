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
    data = "demo:source"     # demo:source, demo:target or sample:<name> (core.samples)
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
import dataclasses
import math
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from core.errors import UserInputError

__all__ = ["LESSON_DIR", "PAGES", "RUN_METRICS", "ANALYSES", "LessonError", "Arm", "Experiment", "NextStep",
           "Lesson", "LessonProblem", "Outcome", "parse_lesson", "load_lessons", "check_rule", "check_outcome",
           "lesson_dataset", "arm_config", "run_results", "run_analysis", "inside_profile", "LessonRun"]

LESSON_DIR = Path(__file__).resolve().parent.parent / "assets" / "lessons"

# Pages a "what to try next" link may open (the url path of each page in app.py's menu).
PAGES = {"data": "Data", "model": "Model", "train": "Train", "features": "Feature maps", "saliency": "Saliency",
         "domain_shift": "Domain shift", "fewshot": "Few-shot", "evaluate": "Evaluate", "use_model": "Use the model"}

# What a training run reports, for rules such as "pretrained.val_acc > scratch.val_acc + 0.1".
RUN_METRICS = ("val_acc", "train_acc", "val_loss", "train_loss", "epochs")

# Lessons that show something a training run alone cannot (see LessonRun for what each one runs).
# Each names the results its rule may read ({name: metrics}); what runs directly is in ANALYSES below.
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
    from core import links

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
        for op, right_node in zip(node.ops, node.comparators):
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


def lesson_dataset(experiment: Experiment):
    """The experiment's images (a core.data.ImageDataset) and a display label."""
    from core import data, samples

    source, _, name = experiment.data.partition(":")
    if source == "demo":
        return (data.demo_dataset(name, per_class=experiment.per_class, seed=experiment.seed),
                f"Demo shapes ({name} look)")
    return (samples.sample_dataset(name, per_class=experiment.per_class, seed=experiment.seed,
                                   size=max(64, experiment.size)), f"Sample images: {name}")


def arm_config(experiment: Experiment, arm: Arm):
    """The TrainConfig of one arm: its strategy's preset at the lesson's size, seed and epochs."""
    from core import backbones
    from core.training import strategy_config

    epochs = arm.epochs or experiment.epochs
    groups = backbones.group_names(experiment.backbone)
    # Short lessons: the fine-tuning presets' head warm-up would take most of three epochs.
    overrides = dict(epochs=epochs, seed=experiment.seed, image_size=experiment.size,
                     warmup_epochs=min(1, epochs - 1) if arm.strategy != "feature_extraction" else 0)
    if arm.strategy == "progressive":
        overrides["unfreeze_every"] = 1
    return strategy_config(arm.strategy, groups, **overrides)


def run_results(records: Mapping[str, object]) -> dict[str, dict[str, float]]:
    """{arm: metrics} from finished run records: the kept (best validation accuracy) epoch's."""
    results = {}
    for arm, record in records.items():
        epochs = list(getattr(record, "epochs", None) or [])
        if not epochs:
            results[arm] = {}
            continue
        best = max(epochs, key=lambda e: e.get("val_acc", -1))
        results[arm] = {k: float(best[k]) for k in ("val_acc", "train_acc", "val_loss", "train_loss") if k in best}
        results[arm]["epochs"] = float(len(epochs))
    return results


def inside_profile(experiment: Experiment, before, after, val) -> tuple[dict, list[dict]]:
    """How much each group of a fine-tuned model moved from its start (weight change) and how
    similar its output stayed (linear CKA) on the validation images: (results, rows)."""
    import torch

    from core.features import depth_profile
    from core.train.base import normalise
    from core.training import encode_images

    x = normalise(encode_images(val, experiment.size), torch.tensor(after.mean).view(1, 3, 1, 1),
                  torch.tensor(after.std).view(1, 3, 1, 1))
    rows = depth_profile(before.eval(), after.eval(), after.layer_groups[:-1], x)
    first, last = rows[0], rows[-1]
    results = {"first": {"change": first["weight_change"], "cka": first["cka"]},
               "last": {"change": last["weight_change"], "cka": last["cka"]}}
    return results, [{"group": r["group"], "weight change": r["weight_change"], "CKA before/after": r["cka"]}
                     for r in rows]


def _saliency(experiment: Experiment, report) -> tuple[dict, list[dict]]:
    """The randomisation check on the pretrained model: a faithful map stops resembling itself
    once the weights that make it are random."""
    from core import backbones, saliency

    ds, _ = lesson_dataset(experiment)
    bb = backbones.load(experiment.backbone)
    # at the lesson's size, not the backbone's 224 px: each randomised group costs a pass per method
    x = bb.transform(experiment.size)(ds[int(experiment.options.get("image", 0))][0])
    methods = list(experiment.options.get("methods", ["gradient", "gradcam"]))
    target = saliency.predicted_class(bb.model, x)
    result = saliency.sanity_check(bb.model, x, target, methods, layers=bb.layer_groups[:-1], seed=experiment.seed,
                                   progress=lambda step, total, _n: report(step / total, "Randomising layers…"))
    results = {m: {"start": 1.0, "end": float(result.similarity[m][-1])} for m in methods}
    rows = [{"randomised down to": step, **{saliency.METHOD_LABELS[m][0]: result.similarity[m][i] for m in methods}}
            for i, step in enumerate(result.steps)]
    return results, rows


def _shift(experiment: Experiment, report) -> tuple[dict, list[dict]]:
    """MMD between the demo's two looks with a permutation test, and the same test on two halves
    of one look as a control (measurements only: plain fine-tuning against DAN is a "dan" run)."""
    from core import backbones, data, mmd
    from core.domain import HEAD_INPUT, extract_features, split_halves

    opts = experiment.options
    source = data.demo_dataset("source", per_class=experiment.per_class, seed=experiment.seed)
    target = data.demo_dataset("target", per_class=experiment.per_class, seed=experiment.seed)
    bb = backbones.load(experiment.backbone)
    model = backbones.classifier(bb, len(source.classes), image_size=experiment.size)
    report(0.05, "Features of both looks…")
    fs = extract_features(model, source, [HEAD_INPUT], experiment.size)[HEAD_INPUT]
    ft = extract_features(model, target, [HEAD_INPUT], experiment.size)[HEAD_INPUT]
    report(0.6, "Permutation tests…")
    n_perm = int(opts.get("permutations", 500))
    shift = mmd.mmd_test(fs, ft, n_permutations=n_perm, seed=experiment.seed)
    half_a, half_b = split_halves(source, experiment.seed)
    control = mmd.mmd_test(fs[_rows(source, half_a)], fs[_rows(source, half_b)], n_permutations=n_perm,
                           seed=experiment.seed)
    results = {"shift": {"mmd2": shift.mmd2, "p_value": shift.p_value},
               "control": {"mmd2": control.mmd2, "p_value": control.p_value}}
    rows = [{"compared": "source look vs target look", "MMD²": shift.mmd2, "p-value": shift.p_value},
            {"compared": "two halves of the source look (control)", "MMD²": control.mmd2, "p-value": control.p_value}]
    return results, rows


def _rows(ds, part) -> list[int]:
    """Positions in ``ds`` of the images of ``part`` (a subset of it, matched by name)."""
    position = {name: i for i, name in enumerate(ds.names)}
    return [position[name] for name in part.names]


def _few_shot(experiment: Experiment, report) -> tuple[dict, list[dict]]:
    """N-way K-shot episodes of classes never trained on, from pretrained features and from random
    ones (no training: prototypes, and the scratch floor's linear classifier per episode). The
    shared and separate multi-task models of the same lesson train as runs, see LessonRun."""
    from core import backbones, fewshot
    from core.fewshot_data import demo_fewshot

    opts = experiment.options
    bb = backbones.load(experiment.backbone)
    shots, ways = int(opts.get("k_shot", 5)), int(opts.get("n_way", 5))
    episodes = demo_fewshot(n_classes=int(opts.get("classes", 12)), per_class=int(opts.get("fewshot_per_class", 12)),
                            seed=experiment.seed, size=experiment.size)
    results, rows = {}, []
    for i, (key, method) in enumerate((("pretrained", "prototypes"), ("scratch", "scratch"))):
        report(0.05 + 0.5 * i, f"Few-shot episodes, {key} features…")
        result = fewshot.evaluate(bb, episodes, method, n_way=ways, k_shot=shots,
                                  n_query=int(opts.get("n_query", 5)), episodes=int(opts.get("episodes", 50)),
                                  seed=experiment.seed, image_size=experiment.size)
        results[key] = {"acc": float(result.mean)}
        rows.append({"what": f"{ways}-way {shots}-shot, {key} features", "accuracy": f"{result.mean:.0%}"})
    return results, rows


# What each kind runs directly in a Task (analyses that do not train); the training of "inside" (a
# "train" run, then inside_profile on its saved models), "shift" (a "dan" run), "distill" (a teacher
# run, then a "distill" run) and "tasks" (a "multitask" run for the shared model and one per task
# for the separate ones) goes through the queue and the worker processes, see LessonRun.
ANALYSES: dict[str, Callable] = {"saliency": _saliency, "shift": _shift, "tasks": _few_shot}
assert set(ANALYSES) | {"inside", "distill"} == set(ANALYSIS_RESULTS)


def run_analysis(experiment: Experiment, report=lambda fraction, text: None) -> tuple[dict, list[dict]]:
    """Run a lesson's direct-core experiment: (results for its rule, rows of a table to show)."""
    from core.seeding import seeded

    with seeded(experiment.seed):
        results, rows = ANALYSES[experiment.kind](experiment, report)
    # plain numbers only: the page shows them and the rule compares them
    return {name: {k: float(v) for k, v in metrics.items()} for name, metrics in results.items()}, rows


# --------------------------------------------------------------------------------------------- in flight


@dataclass
class _Part:
    """One piece of a lesson's experiment: a run queued through the worker kinds, or a Task."""

    name: str
    start: Callable  # () -> core.jobs.TrainingRun or core.tasks.Task
    after: str | None = None  # a run that must have finished first (a distillation's teacher)
    label: str = ""


class LessonRun:
    """A lesson's experiment in flight, without any UI: the Lessons page and ``scripts/lesson_times.py``
    drive it alike.

    Training goes through the queue and the worker processes, as runs of the kinds in
    ``core.worker.KINDS``: a "train" run per arm of a "runs" lesson; for "inside", a "train" run
    and then a Task comparing its saved start and end (``inside_profile``); a "dan" comparison (plain
    fine-tuning against DAN) beside a Task that measures the shift, for "shift"; a teacher's "train"
    run and then a "distill" run (the student with and without it), for "distill"; a "multitask" run
    of the shared model and a one-task "multitask" run per separate model beside a Task for the
    few-shot episodes, for "tasks". Analyses that do not train that way run as one Task. ``poll()``
    starts what waited (for room in this person's share of the queue, or for the teacher), and once
    every part has ended sets ``result`` from the runs' records: ``{"results": {name: metrics},
    "rows": table rows or None, "seconds", "error"}``, or ``{"error": why}`` when nothing could be
    measured.

    ``dataset(spec) -> (dataset, label)`` gives the images of a data spec ("demo:source", ...);
    the page passes its cached demo sets.
    """

    def __init__(self, lesson: Lesson, store, owner: str = "", queue=None, dataset=None):
        from core.tasks import get_queue

        self.lesson, self.store, self.owner = lesson, store, owner
        self.queue = queue or get_queue()
        self._dataset = dataset or (lambda spec: lesson_dataset(dataclasses.replace(lesson.experiment, data=spec)))
        self.jobs: dict = {}  # part name -> TrainingRun or Task
        self.errors: dict[str, str] = {}  # part name -> why it never started
        self.ended: dict[str, float] = {}  # part name -> when it was first seen ended
        self.started = time.time()
        self.stopped = False
        self.result: dict | None = None
        self.parts = self._parts()

    # --- what a lesson's kind queues ---------------------------------------------------------

    def _split(self):
        from core import data

        experiment = self.lesson.experiment
        ds, label = self._dataset(experiment.data)
        return (*data.split(ds, 0.25, experiment.seed), label)

    def _parts(self) -> list[_Part]:
        experiment = self.lesson.experiment
        if experiment.kind == "runs":
            return [self._arm_part(arm) for arm in experiment.arms]
        if experiment.kind == "distill":
            return self._distill_parts()
        if experiment.kind == "inside":
            return self._inside_parts()
        if experiment.kind == "tasks":
            return [*self._multitask_parts(), self._task_part()]
        parts = [self._task_part()]
        if experiment.kind == "shift" and experiment.options.get("dan", True):
            parts.append(self._dan_part())
        return parts

    def _arm_part(self, arm: Arm) -> _Part:
        from core.jobs import start_run

        experiment = self.lesson.experiment

        def start():
            train, val, label = self._split()
            return start_run(self.store, train, val, backbone=experiment.backbone, pretrained=arm.pretrained,
                             config=arm_config(experiment, arm), owner=self.owner, dataset=label,
                             label=arm.label or f"Lesson: {arm.name}", queue=self.queue)

        return _Part(arm.name, start, label=arm.name)

    def _task_part(self) -> _Part:
        from core.tasks import Task

        experiment = self.lesson.experiment

        def start():
            return Task(lambda task: run_analysis(experiment, task.report), name=f"lesson-{self.lesson.slug}",
                        queue=self.queue, owner=self.owner).start()

        label = {"shift": "measuring", "tasks": "few-shot"}.get(experiment.kind, "analysis")
        return _Part("analysis", start, label=label)

    def _inside_parts(self) -> list[_Part]:
        from core.tasks import Task

        experiment = self.lesson.experiment
        # by default every group trains, with discriminative rates: the lesson looks at all of them
        model = self._arm_part(Arm("model", experiment.options.get("strategy", "full"),
                                   label=f"Lesson {self.lesson.order:g}: fine-tuned to look inside"))

        def compare(task):
            run_id = self.jobs["model"].run_id
            task.report(0.1, "Comparing the layers before and after…")
            _, val, _ = self._split()
            return inside_profile(experiment, self.store.load_starting_model(run_id), self.store.load_model(run_id), val)

        def start():
            return Task(compare, name=f"lesson-{self.lesson.slug}", queue=self.queue, owner=self.owner).start()

        return [model, _Part("analysis", start, after="model", label="comparing the layers")]

    def _multitask_parts(self) -> list[_Part]:
        """One model with a head per task, and one model per task with that head alone: the same
        backbone, split, seed and settings (feature extraction), each a "multitask" run."""
        from core.multitask import DEMO_TASKS, start_multitask_run

        experiment = self.lesson.experiment
        number = f"Lesson {self.lesson.order:g}"
        config = arm_config(experiment, Arm("tasks", "feature_extraction"))

        def start(tasks: list[str] | None, label: str):
            def queue():
                from core import data
                from core.multitask import demo_multitask

                ds = demo_multitask(per_class=experiment.per_class, seed=experiment.seed,
                                    size=max(32, experiment.size))
                train, val = data.split(ds, 0.25, experiment.seed)
                if tasks is not None:
                    train, val = train.only_tasks(tasks), val.only_tasks(tasks)
                # accuracy is all the lesson reads: no gradient-conflict batches after each epoch
                return start_multitask_run(self.store, train, val, backbone=experiment.backbone, pretrained=True,
                                           config=config, conflict_batches=0, owner=self.owner,
                                           dataset="Multi-task demo", label=f"{number}: {label}", queue=self.queue)
            return queue

        return [_Part("shared", start(None, "one model for every task"), label="shared model"),
                *(_Part(f"alone:{task}", start([task], f"a model for {task} alone"), label=f"{task} alone")
                  for task in DEMO_TASKS)]

    def _dan_part(self) -> _Part:
        from core.adaptation import adaptation_config, start_comparison

        experiment = self.lesson.experiment

        def start():
            from core import data

            source, label = self._dataset("demo:source")
            target, _ = self._dataset("demo:target")
            train, val = data.split(source, 0.25, experiment.seed)
            config = adaptation_config(experiment.backbone, epochs=experiment.epochs, image_size=experiment.size,
                                       seed=experiment.seed)
            return start_comparison(train, val, target, config, float(experiment.options.get("lam", 1.0)),
                                    store=self.store, backbone=experiment.backbone, target_eval=target,
                                    owner=self.owner, label=f"Lesson {self.lesson.order:g}: plain vs DAN",
                                    dataset=label, queue=self.queue)

        return _Part("dan", start, label="plain vs DAN")

    def _distill_parts(self) -> list[_Part]:
        from core.distillation import start_distillation
        from core.jobs import start_run

        experiment, opts = self.lesson.experiment, self.lesson.experiment.options
        number = f"Lesson {self.lesson.order:g}"

        def teacher():
            train, val, label = self._split()
            config = arm_config(experiment, Arm("teacher", opts.get("teacher_strategy", "feature_extraction"),
                                                epochs=int(opts.get("teacher_epochs", experiment.epochs))))
            return start_run(self.store, train, val, backbone=experiment.backbone, pretrained=True, config=config,
                             owner=self.owner, dataset=label, label=f"{number}: the teacher", queue=self.queue)

        def students():
            train, val, label = self._split()
            student = Arm("student", opts.get("student_strategy", "feature_extraction"))
            config = dataclasses.replace(arm_config(experiment, student), image_size=int(opts.get("student_size", 32)),
                                         early_stopping=0)
            return start_distillation(self.store, self.jobs["teacher"].run_id, train, val, config,
                                      float(opts.get("temperature", 4.0)), float(opts.get("alpha", 0.7)),
                                      backbone=experiment.backbone, pretrained=bool(opts.get("student_pretrained", True)),
                                      owner=self.owner, dataset=label, label=f"{number}: the students",
                                      queue=self.queue)

        return [_Part("teacher", teacher, label="teacher"),
                _Part("students", students, after="teacher", label="students")]

    # --- following it ------------------------------------------------------------------------

    def _record(self, name: str):
        """The record of part ``name`` once it is a run (None for a Task, or a run removed since)."""
        run_id = self.run_ids().get(name)
        return self.store.get(run_id) if run_id else None

    def _status(self, name: str) -> str:
        if name in self.errors:
            return "failed"
        job = self.jobs.get(name)
        if job is None:
            return "cancelled" if self.stopped else "waiting"
        return job.snapshot().status

    def run_ids(self) -> dict[str, str]:
        """{part: run id} of the parts that are runs (each can be opened on its page)."""
        from core.jobs import TrainingRun

        return {name: job.run_id for name, job in self.jobs.items() if isinstance(job, TrainingRun)}

    def poll(self) -> bool:
        """Start what can start now and bring ``result`` up to date; True while the experiment goes on."""
        if self.result is not None:
            return False
        from core.tasks import DONE

        for run_id in self.run_ids().values():
            self.store.touch(run_id)  # a run on someone's screen is kept from the disk cap
        going = False
        for part in self.parts:
            if part.name in self.jobs or part.name in self.errors:
                if self._status(part.name) in DONE:
                    self.ended.setdefault(part.name, time.time())
                else:
                    going = True
                continue
            if self.stopped:
                continue
            if part.after is not None:
                before = self._status(part.after)
                if before not in DONE:
                    going = True
                    continue
                if before != "finished":
                    self.errors[part.name] = f"it needs the {part.after} run, which ended {before}"
                    continue
            room = self.queue.room_for(self.owner)
            if room is not None and room <= 0:
                going = True  # this person's share of the queue is full: start it once a run ends
                continue
            try:
                self.jobs[part.name] = part.start()
            except UserInputError as exc:
                self.errors[part.name] = str(exc)
                continue
            going = True
        if going:
            return True
        self.result = self._outcome()
        return False

    def cancel(self) -> None:
        """Stop every part that is queued or training; parts not started yet never start."""
        self.stopped = True
        for job in self.jobs.values():
            job.cancel()

    def progress(self) -> tuple[float, str]:
        """(fraction of the whole experiment, what each part is doing), for a progress bar."""
        done, parts = 0.0, []
        for part in self.parts:
            job = self.jobs.get(part.name)
            snap = job.snapshot() if job is not None else None
            status = self._status(part.name)
            fraction = 1.0 if snap is not None and snap.done else (snap.progress if snap is not None else 0.0)
            done += fraction
            # a Task says what it is doing in words; a run's phase is a name ("cache", "train")
            what = snap.phase if snap is not None and status == "running" and part.name == "analysis" else ""
            percent = f" {fraction:.0%}" if status == "running" else ""
            parts.append(f"{part.label}: {what or status}{percent}")
        return done / max(1, len(self.parts)), " · ".join(parts)

    # --- the outcome -------------------------------------------------------------------------

    def _outcome(self) -> dict:
        seconds = max(self.ended.values(), default=time.time()) - self.started
        failed = dict(self.errors)
        for name in self.jobs:
            snap = self.jobs[name].snapshot()
            if snap.status not in ("finished", "cancelled"):
                failed[name] = f"{snap.status}{' — ' + snap.message if snap.message else ''}"
        error = "; ".join(f"{name}: {why}" for name, why in failed.items())
        if self.stopped:
            return {"error": "You stopped the experiment before it finished: run it again to see the outcome."}
        kind = self.lesson.experiment.kind
        results: dict[str, dict[str, float]] = {}
        rows: list[dict] | None = []
        if kind == "runs":
            results, rows = run_results({arm.name: self._record(arm.name) for arm in self.lesson.experiment.arms}), None
        elif kind == "distill":
            results, rows = self._distill_results()
        else:
            task = self.jobs.get("analysis")
            if task is not None and task.snapshot().status == "finished":
                results, rows = task.result
                rows = list(rows)
            if kind == "shift":
                more, more_rows = self._dan_results()
                results, rows = {**results, **more}, rows + more_rows
            if kind == "tasks":
                more, more_rows = self._multitask_results()
                results, rows = {**more, **results}, more_rows + rows
            if kind == "inside" and results:
                model = run_results({"model": self._record("model")})["model"]
                results = {**results, "model": {"val_acc": model["val_acc"]} if model else {}}
        if not any(results.values()):
            return {"error": error or "The experiment ended without results."}
        results = {name: {k: float(v) for k, v in metrics.items()} for name, metrics in results.items()}
        return {"results": results, "rows": rows, "seconds": seconds, "error": error}

    def _dan_results(self) -> tuple[dict, list[dict]]:
        from core.adaptation import comparison_of

        comparison = comparison_of(self._record("dan"))
        if comparison is None:
            return {}, []
        results, rows = {}, []
        for key, arm in (("plain", comparison.plain), ("dan", comparison.dan)):
            results[key] = {"target_acc": arm.target_acc, "mmd": arm.mmd_after}
            rows.append({"compared": f"{arm.name}: accuracy on the target look", "MMD²": arm.mmd_after,
                         "target accuracy": arm.target_acc})
        return results, rows

    def _multitask_results(self) -> tuple[dict, list[dict]]:
        """Shared against separate from the runs' records: the mean over tasks of each task's
        validation accuracy (at the epoch each run kept), and every parameter of the models."""
        import numpy as np

        from core.multitask import kept_accuracy_by_task

        def read(name: str) -> tuple[dict[str, float], float]:
            record = self._record(name)
            if record is None or not record.epochs:
                return {}, math.nan
            info = record.info or {}
            params = info.get("trainable_params", math.nan) + info.get("frozen_params", math.nan)
            return kept_accuracy_by_task(record.epochs, info.get("best_epoch")), float(params)

        shared, shared_params = read("shared")
        separate, separate_params = {}, 0.0
        for part in self.parts:
            if part.name.startswith("alone:"):
                task = part.name.partition(":")[2]
                acc, params = read(part.name)
                separate[task] = acc.get(task, math.nan)
                separate_params += params
        # a task whose run failed counts as nan: the mean is nan and the rule cannot match
        results = {"shared": {"acc": float(np.mean(list(shared.values()))), "params": shared_params} if shared else {},
                   "separate": {"acc": float(np.mean(list(separate.values()))), "params": separate_params}}
        rows = [{"what": f"task {task}: shared / separate",
                 "accuracy": f"{shared.get(task, math.nan):.0%} / {separate.get(task, math.nan):.0%}"}
                for task in separate]
        return results, rows

    def _distill_results(self) -> tuple[dict, list[dict]]:
        from core.distillation import VARIANTS, students_of

        experiment = self.lesson.experiment
        teacher = self._record("teacher")
        results = {"teacher": {}}
        if teacher is not None and run_results({"teacher": teacher})["teacher"]:
            results["teacher"] = {"val_acc": run_results({"teacher": teacher})["teacher"]["val_acc"]}
        record = self._record("students")
        students = students_of(record) if record is not None else {v: [] for v in VARIANTS}
        for key, variant in zip(("with_teacher", "without_teacher"), VARIANTS):
            accs = [e["val_acc"] for e in students[variant] if "val_acc" in e]
            results[key] = {"val_acc": max(accs)} if accs else {}
        size = int(experiment.options.get("student_size", 32))
        nan = float("nan")
        rows = [{"model": f"teacher ({experiment.size} px)", "validation accuracy": results["teacher"].get("val_acc", nan)},
                {"model": f"student ({size} px) with the teacher",
                 "validation accuracy": results["with_teacher"].get("val_acc", nan)},
                {"model": f"student ({size} px), labels only",
                 "validation accuracy": results["without_teacher"].get("val_acc", nan)}]
        return results, rows

