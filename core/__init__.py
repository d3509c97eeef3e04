"""Transfer Lab's engine, with no UI code, in floors whose imports only go down (docs/API.md draws them):
applications (cli, lessons, export, links) over runs, methods, train, analysis, models, data and the basics."""

import os

# OpenMP threads that wait for work sleep instead of spinning (the PASSIVE policy); a value set by
# the user wins. The engine always runs beside other work: a classroom's page reruns, analyses,
# other runs. Spinning threads then take the cores the working ones need: the default demo run with
# two threads beside six busy processes took 37.4 s with libgomp's default and 4.3 s with PASSIVE
# (8.7x; bench/bench_contention.py), for about 16% more time on an idle machine.
# libgomp reads this once, when torch loads it: importing `core` before torch, as app.py, the pages,
# the workers and the command line do, is enough.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
