"""Which code trains which kind of run: the one place that maps a run folder's kind to its trainer."""

from __future__ import annotations

import importlib

from core.errors import UserInputError
from core.runs.store import RunRecord

__all__ = ["KINDS", "kind_function"]

# What a run folder holds decides what trains it: ``run.json``'s ``config["kind"]`` names one of
# these (module:function), imported when first needed so the worker loads only what it runs. Each
# takes (store, record, stop, log, save, distributed) and returns (status, message, record changes);
# every one of them trains through the one loop (``core.train.Trainer``), with a method of
# ``core.methods`` where the kind is more than plain classification.
KINDS = {
    "train": "core.runs.kinds.classify:train_folder",
    "dan": "core.runs.kinds.dan:train_folder",
    "distill": "core.runs.kinds.distill:train_folder",
    "multitask": "core.runs.kinds.multitask:train_folder",
    "meta": "core.runs.kinds.meta:train_folder",
    "lr_find": "core.runs.kinds.lr_find:train_folder",  # a learning-rate sweep: a result in the record, no weights
}


def kind_function(record: RunRecord):
    """The function that trains this record's kind of run (UserInputError for one it cannot)."""
    kind = str(record.config.get("kind", "train"))
    target = KINDS.get(kind)
    if target is None:
        raise UserInputError(f"This run folder asks for a kind of training ({kind!r}) this version cannot do; "
                             f"known kinds: {', '.join(sorted(KINDS))}.")
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name, None)
    if function is None:
        raise UserInputError(f"This version cannot train {kind!r} runs yet ({target} is missing).")
    return function
