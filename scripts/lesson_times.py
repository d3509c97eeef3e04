#!/usr/bin/env python
"""How long each lesson's experiment takes, and whether its outcome is the expected one.

Runs every lesson of assets/lessons/ (or the numbers given) headless, one after another, the way
the Lessons page runs it: ``core.lessons.LessonRun`` through this process's queue and its warm
worker processes (the settings' slots and per-person share, as on a server). The worker pool is
started and warm before the first lesson, as a server starts it at launch. Prints per lesson the
seconds from the click to the outcome and whether it matched, and the load average beside them:
a class waits at most 60 s a lesson on two idle cores.

    python scripts/lesson_times.py          # every lesson
    python scripts/lesson_times.py 2 6      # lessons 2 and 6
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lessons", nargs="*", type=int, help="lesson numbers (default: all)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a lesson may take before it is stopped")
    args = parser.parse_args()
    if os.environ.get("TRANSFER_LAB_DATA_DIR"):
        return measure(args)
    with tempfile.TemporaryDirectory(prefix="lesson-times-") as folder:  # not the app's runs
        os.environ["TRANSFER_LAB_DATA_DIR"] = folder
        return measure(args)


def measure(args) -> int:
    from core import lessons
    from core.runs import RunStore
    from core.runs.tasks import get_pool, get_queue, reset
    from core.settings import get_settings

    found, problems = lessons.load_lessons()
    for problem in problems:
        print(f"skipped {problem.file}: {problem.message}")
    settings = get_settings()
    store = RunStore(settings.data_dir)
    print(f"{os.cpu_count()} CPU cores, {settings.max_concurrent_runs} training slot(s), "
          f"{settings.max_queued_per_person} runs per person; starting the workers…", flush=True)
    if not get_pool().wait_ready(120):
        print("the worker processes did not start")
        return 1
    chosen = args.lessons or list(range(1, len(found) + 1))
    rows = []
    try:
        for number in chosen:
            lesson = found[number - 1]
            load = os.getloadavg()[0]
            run = lessons.LessonRun(lesson, store, owner=f"lesson-times-{number:02d}".ljust(16, "x"), queue=get_queue())
            clicked = time.perf_counter()
            while run.poll():
                if time.perf_counter() - clicked > args.timeout:
                    run.cancel()
                time.sleep(0.2)
            seconds = time.perf_counter() - clicked
            result = run.result
            if "results" in result:
                outcome = lessons.check_outcome(lesson, result["results"])
                matched = "yes" if outcome.matched else "no"
                values = ", ".join(f"{k} = {v:.3g}" for k, v in outcome.values.items())
            else:
                matched, values = "no", f"did not finish: {result['error']}"
            if result.get("error") and "results" in result:
                values += f" (some parts did not finish: {result['error']})"
            rows.append((number, lesson.title, seconds, matched, load, os.getloadavg()[0]))
            print(f"lesson {number}: {seconds:6.1f} s  matched {matched:3}  load {load:.1f} -> {os.getloadavg()[0]:.1f}"
                  f"  {lesson.title}: {values}", flush=True)
    finally:
        reset()
    print("\nlesson  seconds  matched  load avg (1 min) before -> after")
    for number, title, seconds, matched, before, after in rows:
        print(f"{number:>6}  {seconds:7.1f}  {matched:>7}  {before:.1f} -> {after:.1f}   {title}")
    slow = [n for n, _, s, *_ in rows if s > 60]
    print(f"\nover 60 s: {', '.join(map(str, slow)) or 'none'}; not as expected: "
          f"{', '.join(str(n) for n, *_, m, _b, _a in rows if m != 'yes') or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
