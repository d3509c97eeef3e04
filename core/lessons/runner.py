"""A lesson's experiment in flight: its runs queued through the worker kinds, its analyses as tasks,
and the outcome read from their records once every part has ended."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.data import DEMO_TASKS, demo_multitask, split
from core.errors import UserInputError
from core.lessons.catalogue import Arm, Lesson
from core.lessons.experiments import arm_config, inside_profile, lesson_dataset, run_analysis, run_results
from core.methods.adaptation import adaptation_config
from core.methods.multitask import kept_accuracy_by_task
from core.runs.jobs import TrainingRun, start_run
from core.runs.kinds.dan import comparison_of, start_comparison
from core.runs.kinds.distill import VARIANTS, start_distillation, students_of
from core.runs.kinds.multitask import start_multitask_run
from core.runs.tasks import DONE, Task, get_queue

__all__ = ["LessonRun"]


@dataclass
class _Part:
    """One piece of a lesson's experiment: a run queued through the worker kinds, or a Task."""

    name: str
    start: Callable  # () -> core.runs.jobs.TrainingRun or core.runs.tasks.Task
    after: str | None = None  # a run that must have finished first (a distillation's teacher)
    label: str = ""


class LessonRun:
    """A lesson's experiment in flight, without any UI: the Lessons page and ``scripts/lesson_times.py``
    drive it alike.

    Training goes through the queue and the worker processes, as runs of the kinds in
    ``core.runs.registry.KINDS``: a "train" run per arm of a "runs" lesson; for "inside", a "train" run
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
        experiment = self.lesson.experiment
        ds, label = self._dataset(experiment.data)
        return (*split(ds, 0.25, experiment.seed), label)

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
        experiment = self.lesson.experiment

        def start():
            train, val, label = self._split()
            return start_run(self.store, train, val, backbone=experiment.backbone, pretrained=arm.pretrained,
                             config=arm_config(experiment, arm), owner=self.owner, dataset=label,
                             label=arm.label or f"Lesson: {arm.name}", queue=self.queue)

        return _Part(arm.name, start, label=arm.name)

    def _task_part(self) -> _Part:
        experiment = self.lesson.experiment

        def start():
            return Task(lambda task: run_analysis(experiment, task.report), name=f"lesson-{self.lesson.slug}",
                        queue=self.queue, owner=self.owner).start()

        label = {"shift": "measuring", "tasks": "few-shot"}.get(experiment.kind, "analysis")
        return _Part("analysis", start, label=label)

    def _inside_parts(self) -> list[_Part]:
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
        experiment = self.lesson.experiment
        number = f"Lesson {self.lesson.order:g}"
        config = arm_config(experiment, Arm("tasks", "feature_extraction"))

        def start(tasks: list[str] | None, label: str):
            def queue():
                ds = demo_multitask(per_class=experiment.per_class, seed=experiment.seed,
                                    size=max(32, experiment.size))
                train, val = split(ds, 0.25, experiment.seed)
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
        experiment = self.lesson.experiment

        def start():
            source, label = self._dataset("demo:source")
            target, _ = self._dataset("demo:target")
            train, val = split(source, 0.25, experiment.seed)
            config = adaptation_config(experiment.backbone, epochs=experiment.epochs, image_size=experiment.size,
                                       seed=experiment.seed)
            return start_comparison(train, val, target, config, float(experiment.options.get("lam", 1.0)),
                                    store=self.store, backbone=experiment.backbone, target_eval=target,
                                    owner=self.owner, label=f"Lesson {self.lesson.order:g}: plain vs DAN",
                                    dataset=label, queue=self.queue)

        return _Part("dan", start, label="plain vs DAN")

    def _distill_parts(self) -> list[_Part]:
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
        return {name: job.run_id for name, job in self.jobs.items() if isinstance(job, TrainingRun)}

    def poll(self) -> bool:
        """Start what can start now and bring ``result`` up to date; True while the experiment goes on."""
        if self.result is not None:
            return False
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
        experiment = self.lesson.experiment
        teacher = self._record("teacher")
        results = {"teacher": {}}
        if teacher is not None and run_results({"teacher": teacher})["teacher"]:
            results["teacher"] = {"val_acc": run_results({"teacher": teacher})["teacher"]["val_acc"]}
        record = self._record("students")
        students = students_of(record) if record is not None else {v: [] for v in VARIANTS}
        for key, variant in zip(("with_teacher", "without_teacher"), VARIANTS, strict=True):
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
