"""Transfer Lab's engine: data, backbones, training and analysis, with no UI code."""

import os

# OpenMP threads that wait for work sleep instead of spinning (the PASSIVE policy); a value set by
# the user wins. The engine always runs beside other work: a classroom's page reruns, analyses,
# other runs. Spinning threads then take the cores the working ones need: the default demo run with
# two threads beside six busy processes took 28-38 s instead of about 5 s (bench/bench_contention.py).
# libgomp reads this once, when torch loads it: importing `core` before torch, as app.py, the pages,
# the workers and the command line do, is enough.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
