"""Which epoch's weights a run keeps, and what that means: the figures every page and the command
line report for a run are those of the model it saved, not of its last epoch.

Early stopping puts back the epoch with the lowest validation loss, the divergence guard the last
good one, and a run whose worker died keeps its best so far: after "Fine-tune all" the last epoch
can score 77.5 % while the kept weights score 90 %. A run names the epoch it kept in
``info["kept_epoch"]`` (``ending``); older records had ``info["best_epoch"]`` or nothing.
"""

from __future__ import annotations

import math

__all__ = ["kept_epoch_number", "kept_epoch", "kept_metric", "kept_label", "kept_phase", "phase_of",
           "who_won", "HEAD_ALONE_WON", "trained_groups_by", "plan_as_run"]

# The sentence a student reads when the warm-up's head beat every fine-tuned epoch.
HEAD_ALONE_WON = ("fine-tuning the body did not beat the new head alone on these images: "
                  "the pretrained features already separate them")


def kept_epoch_number(record) -> int | None:
    """The 1-based epoch whose weights the run's model file holds; 0 for the starting weights (a run
    that diverged in its first epoch); None for a run without epochs."""
    epochs = list(record.epochs or [])
    if not epochs:
        return None
    info = record.info or {}
    for key in ("kept_epoch", "best_epoch"):
        if info.get(key) is not None:
            return int(info[key])
    if record.status == "interrupted":  # its best weights so far (BestKeeper: the highest accuracy)
        scored = [e for e in epochs if _finite(e.get("val_acc"))]
        if scored:
            best = max(e["val_acc"] for e in scored)
            return int([e for e in scored if e["val_acc"] == best][-1]["epoch"])
    return int(epochs[-1]["epoch"])


def kept_epoch(record) -> dict | None:
    """The kept epoch's metrics (a row of ``record.epochs``), or None (no epochs, or the starting weights)."""
    number = kept_epoch_number(record)
    return next((e for e in record.epochs or [] if e.get("epoch") == number), None)


def kept_metric(record, key: str = "val_acc") -> float | None:
    """One metric of the kept weights, e.g. their validation accuracy."""
    row = kept_epoch(record)
    return None if row is None or key not in row else row[key]


def kept_label(record) -> str:
    """"kept: epoch 16 of 29" (or "" for a run without epochs)."""
    number = kept_epoch_number(record)
    if number is None:
        return ""
    total = len(record.epochs)
    return f"kept: epoch {number} of {total}" if number else f"kept: the starting weights ({total} epochs ran)"


def phase_of(plan: list[dict], epoch: int | None) -> str:
    """ "warm-up" when ``epoch`` (1-based) trained the head alone and a later epoch of ``plan`` trains
    the body, "fine-tuning" when it trained body layers after such a warm-up, "" otherwise (a run that
    only ever trains the head, or one that trains the body from its first epoch)."""
    if not plan or not epoch or epoch > len(plan):
        return ""
    body = [any(m > 0 for g, m in step.items() if g != "head") for step in plan]
    if body[0] or not any(body):
        return ""
    return "fine-tuning" if body[epoch - 1] else "warm-up" if any(body[epoch:]) else ""


def kept_phase(record) -> str:
    """Whether the kept weights are the warm-up's head or a fine-tuned epoch (see ``phase_of``)."""
    info = record.info or {}
    if info.get("kept_phase") is not None:
        return info["kept_phase"]
    return phase_of(record.config.get("plan") or [], kept_epoch_number(record))


def who_won(record) -> str:
    """One sentence on whether fine-tuning beat the new head alone, or "" when the run had no warm-up."""
    phase, number = kept_phase(record), kept_epoch_number(record)
    if phase == "warm-up":
        return (f"The kept weights are the warm-up's head (epoch {number}): {HEAD_ALONE_WON}. "
                "Feature extraction would have done as well here, faster.")
    if phase == "fine-tuning":
        plan = record.config.get("plan") or []
        head = [e.get("val_acc") for e in record.epochs or []
                if phase_of(plan, e.get("epoch")) == "warm-up" and _finite(e.get("val_acc"))]
        kept = kept_metric(record)
        if head and _finite(kept) and kept < max(head):  # kept for another reason than beating the head
            why = ("the last good epoch before the run diverged" if record.status == "diverged"
                   else "the lowest validation loss, though not the highest accuracy")
            return (f"The kept weights are a fine-tuned epoch (epoch {number}), {why}: they score "
                    f"{kept:.1%}, below the warm-up's head alone ({max(head):.1%}).")
        than = f" ({kept:.1%} against the head's best {max(head):.1%})" if head and _finite(kept) else ""
        return (f"The kept weights are a fine-tuned epoch (epoch {number}): training the body beat the new "
                f"head alone{than}.")
    return ""


def trained_groups_by(record, epoch: int | None = None) -> set[str] | None:
    """The layer groups that had trained by ``epoch`` (default: the kept one), from the run's plan;
    None for a run without a plan (older records)."""
    plan = record.config.get("plan") or []
    number = kept_epoch_number(record) if epoch is None else epoch
    if not plan:
        return None
    upto = plan[:number] if number is not None else plan
    return {g for step in upto for g, m in step.items() if m > 0}


def plan_as_run(record) -> list[dict]:
    """The run's plan cut to the epochs that ran: early stopping ends a run before its plan does."""
    plan = list(record.config.get("plan") or [])
    if record.done and record.epochs:
        return plan[:len(record.epochs)]
    return plan


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
