"""One module per kind of run a worker process trains (``run.json``'s ``config["kind"]``): how it is
queued (``start_*``), what the worker runs for its folder (``train_folder``), and how its result is
read back from the record. ``core.runs.registry`` maps each kind to its ``train_folder``."""
