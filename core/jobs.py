"""The old home of queueing a run, kept so that ``core.jobs.start_run`` and its neighbours go on
working: the names live in ``core.runs.jobs`` now."""

from core.runs.jobs import *  # noqa: F403  (every public name of core.runs.jobs, as this module's own)
from core.runs.jobs import __all__  # noqa: F401
