"""What a lesson's experiment runs: its data, each arm's settings, the analyses that do not train, and
the results a rule reads from finished runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from core.analysis import mmd, saliency
from core.analysis.domain import HEAD_INPUT, extract_features, split_halves
from core.analysis.features import depth_profile
from core.analysis.sanity import sanity_check
from core.data import demo_dataset, demo_fewshot, sample_dataset
from core.data.encoded import encode_images, normalise
from core.lessons.catalogue import ANALYSIS_RESULTS, Arm, Experiment
from core.methods import fewshot
from core.models import backbones
from core.models.heads import classifier
from core.runs.kept import kept_epoch
from core.seeding import seeded
from core.train.base import MAX_PINS
from core.train.strategies import strategy_config

__all__ = ["ANALYSES", "lesson_dataset", "arm_config", "run_results", "inside_profile", "run_analysis"]


def lesson_dataset(experiment: Experiment):
    """The experiment's images (a core.data.ImageDataset) and a display label."""
    source, _, name = experiment.data.partition(":")
    if source == "demo":
        return (demo_dataset(name, per_class=experiment.per_class, seed=experiment.seed),
                f"Demo shapes ({name} look)")
    return (sample_dataset(name, per_class=experiment.per_class, seed=experiment.seed,
                           size=max(64, experiment.size)), f"Sample images: {name}")


def arm_config(experiment: Experiment, arm: Arm):
    """The TrainConfig of one arm: its strategy's preset at the lesson's size, seed and epochs."""
    epochs = arm.epochs or experiment.epochs
    groups = backbones.group_names(experiment.backbone)
    # Short lessons: the fine-tuning presets' head warm-up would take most of three epochs.
    overrides = dict(epochs=epochs, seed=experiment.seed, image_size=experiment.size,
                     warmup_epochs=min(1, epochs - 1) if arm.strategy != "feature_extraction" else 0)
    if arm.strategy == "progressive":
        overrides["unfreeze_every"] = 1
    if experiment.options.get("watch"):  # pin the first N validation images: the rule may read cam_movement
        overrides["watch"] = tuple(range(min(int(experiment.options["watch"]), MAX_PINS)))
    return strategy_config(arm.strategy, groups, **overrides)


def run_results(records: Mapping[str, object]) -> dict[str, dict[str, float]]:
    """{arm: metrics} from finished run records: those of the epoch whose weights each run keeps."""
    results = {}
    for arm, record in records.items():
        epochs = list(getattr(record, "epochs", None) or [])
        best = kept_epoch(record) if epochs else None
        if best is None:
            results[arm] = {}
            continue
        results[arm] = {k: float(best[k]) for k in ("val_acc", "train_acc", "val_loss", "train_loss") if k in best}
        results[arm]["epochs"] = float(len(epochs))
        info = getattr(record, "info", None) or {}
        if "cam_movement" in info:
            results[arm]["cam_movement"] = float(info["cam_movement"])
    return results


def inside_profile(experiment: Experiment, before, after, val) -> tuple[dict, list[dict]]:
    """How much each group of a fine-tuned model moved from its start (weight change) and how
    similar its output stayed (linear CKA) on the validation images: (results, rows)."""
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
    ds, _ = lesson_dataset(experiment)
    bb = backbones.load(experiment.backbone)
    # at the lesson's size, not the backbone's 224 px: each randomised group costs a pass per method
    x = bb.transform(experiment.size)(ds[int(experiment.options.get("image", 0))][0])
    methods = list(experiment.options.get("methods", ["gradient", "gradcam"]))
    target = saliency.predicted_class(bb.model, x)
    result = sanity_check(bb.model, x, target, methods, layers=bb.layer_groups[:-1], seed=experiment.seed,
                          progress=lambda step, total, _n: report(step / total, "Randomising layers…"))
    results = {m: {"start": 1.0, "end": float(result.similarity[m][-1])} for m in methods}
    rows = [{"randomised down to": step, **{saliency.METHOD_LABELS[m][0]: result.similarity[m][i] for m in methods}}
            for i, step in enumerate(result.steps)]
    return results, rows


def _shift(experiment: Experiment, report) -> tuple[dict, list[dict]]:
    """MMD between the demo's two looks with a permutation test, and the same test on two halves
    of one look as a control (measurements only: plain fine-tuning against DAN is a "dan" run)."""
    opts = experiment.options
    source = demo_dataset("source", per_class=experiment.per_class, seed=experiment.seed)
    target = demo_dataset("target", per_class=experiment.per_class, seed=experiment.seed)
    bb = backbones.load(experiment.backbone)
    model = classifier(bb, len(source.classes), image_size=experiment.size)
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
    with seeded(experiment.seed):
        results, rows = ANALYSES[experiment.kind](experiment, report)
    # plain numbers only: the page shows them and the rule compares them
    return {name: {k: float(v) for k, v in metrics.items()} for name, metrics in results.items()}, rows


# --------------------------------------------------------------------------------------------- in flight
