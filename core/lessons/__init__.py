"""Lessons: Markdown files that declare an experiment, its expected outcome and the rule that checks it.

- ``catalogue``: reading lesson files (TOML front matter, then Markdown) and checking their rules;
- ``experiments``: what an experiment runs (data, settings of each arm, analyses that do not train);
- ``runner``: ``LessonRun``, a lesson's experiment in flight through the queue and the worker processes.
"""

from core.lessons.catalogue import (
    ANALYSIS_RESULTS,
    LESSON_DIR,
    PAGES,
    RUN_METRICS,
    Arm,
    Experiment,
    Lesson,
    LessonError,
    LessonProblem,
    NextStep,
    Outcome,
    check_outcome,
    check_rule,
    load_lessons,
    parse_lesson,
)
from core.lessons.experiments import (
    ANALYSES,
    arm_config,
    inside_profile,
    lesson_dataset,
    run_analysis,
    run_results,
)
from core.lessons.runner import LessonRun

__all__ = ["LESSON_DIR", "PAGES", "RUN_METRICS", "ANALYSIS_RESULTS", "ANALYSES", "LessonError", "Arm", "Experiment",
           "NextStep", "Lesson", "LessonProblem", "Outcome", "parse_lesson", "load_lessons", "check_rule",
           "check_outcome", "lesson_dataset", "arm_config", "run_results", "run_analysis", "inside_profile",
           "LessonRun"]
