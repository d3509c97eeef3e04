"""Links that carry a setup: the app's settings as query-string parameters, and back.

A teacher shares one link and every student opens the same data, backbone, strategy and
training settings, optionally with some settings locked (shown but not editable) and some
sections hidden. ``decode`` never raises: a parameter it does not know, or a value it cannot
use, is left out with a note saying why, so a mistyped link still opens the app.

Settings are plain values (``epochs`` an int, ``freeze`` a list of group names, ...). ``encode``
writes only those that differ from what the setup's strategy starts with (``defaults_for``: the
strategy's preset over ``DEFAULTS``), so an untouched setup is a short link, and the app, which
puts back a strategy's preset before the link's own values, gets every setting back:
``complete(decode(encode(s))[0]) == complete(s)``. The
owner and run parameters (``u``, ``run``) and access tokens belong to other parts of the app:
they are in ``FOREIGN`` and are neither read nor reported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from core.models import backbones
from core.train.base import TrainConfig
from core.train.strategies import strategy_config

__all__ = ["DEFAULTS", "IMAGE_SIZES", "BATCH_SIZES", "SALIENCY_METHODS", "LEARNING_RATES", "LOCKABLE", "SECTIONS", "STRATEGIES",
           "FOREIGN", "KEYS", "TRAINING_KEYS", "defaults_for", "complete", "encode", "decode"]

STRATEGIES = ("feature_extraction", "last_stage", "full", "discriminative", "progressive", "custom")
SALIENCY_METHODS = ("gradient", "smoothgrad", "integrated_gradients", "gradcam", "occlusion")
IMAGE_SIZES = (96, 128, 160, 224)  # the Train page's choices
BATCH_SIZES = (4, 8, 16, 32, 64)
# The Train page's steps; a link also carries any other rate the app sets (a preset's 0.002, the
# LR finder's two significant digits) between MIN_LR and MAX_LR.
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 3e-2, 1e-1)
MIN_LR, MAX_LR = 1e-7, 1.0

# What a link may lock (shown but disabled for students), with the words the builder shows.
LOCKABLE = {
    "data": "Dataset",
    "backbone": "Backbone",
    "pretrained": "Pretrained or from scratch",
    "strategy": "Strategy",
    "freeze": "Frozen groups and learning-rate multipliers",
    "epochs": "Epochs",
    "lr": "Learning rate",
    "seed": "Seed",
    "size": "Input size",
    "sal_methods": "Saliency methods",
    "kernel": "Domain shift kernel",
    "picture": "Domain shift 2-D picture",
}
# Sections a link may hide.
SECTIONS = {
    "uploads": "Data: uploads (ZIP, files, webcam)",
    "own_weights": "Model: your own weights file",
    "ranking": "Model: ranking backbones before training",
    "sanity_check": "Saliency: the randomisation check",
    "adaptation": "Domain shift: adaptation (DAN)",
}
FOREIGN = ("u", "run", "t", "token")

_PRESET = TrainConfig()  # the feature-extraction preset: what a new session starts with

DEFAULTS: dict = {
    "data": "source",
    "per_class": 20,
    "backbone": "efficientnet_lite0",
    "pretrained": True,
    "strategy": "feature_extraction",
    "freeze": None,  # None: the strategy's preset decides
    "lr_mult": {},
    "unfreeze_every": 0,
    "epochs": _PRESET.epochs,
    "lr": _PRESET.lr,
    "seed": _PRESET.seed,
    "size": _PRESET.image_size,
    "batch": _PRESET.batch_size,
    "patience": _PRESET.early_stopping,
    "warmup": _PRESET.warmup_epochs,
    "augment": _PRESET.augment,
    "flip": _PRESET.flip,
    "jitter": _PRESET.color_jitter,
    "optimizer": _PRESET.optimizer,
    "schedule": _PRESET.schedule,
    "train_bn": _PRESET.train_bn,
    "sal_methods": ["gradient", "gradcam"],
    "kernel": "median",
    "picture": "pca",
    "lock": [],
    "hide": [],
}
KEYS = tuple(DEFAULTS)
# Link key -> the TrainConfig field it carries.
TRAINING_KEYS = {"epochs": "epochs", "lr": "lr", "seed": "seed", "size": "image_size", "batch": "batch_size",
                 "patience": "early_stopping", "warmup": "warmup_epochs", "augment": "augment", "flip": "flip",
                 "jitter": "color_jitter", "optimizer": "optimizer", "schedule": "schedule", "train_bn": "train_bn",
                 "unfreeze_every": "unfreeze_every"}
# The app's strategy codes and the core preset each puts back ("custom" keeps what is set).
_PRESET_OF = {"feature_extraction": "feature_extraction", "last_stage": "last_stage", "full": "full",
              "discriminative": "full", "progressive": "progressive"}


def defaults_for(settings: Mapping) -> dict:
    """What a setup starts with before its link's values: ``DEFAULTS`` with its strategy's preset
    (on its backbone's layer groups) for the training settings a preset decides."""
    strategy = settings.get("strategy") or DEFAULTS["strategy"]
    if strategy not in _PRESET_OF:
        return dict(DEFAULTS)
    groups = backbones.group_names(settings.get("backbone") or DEFAULTS["backbone"])
    preset = strategy_config(_PRESET_OF[strategy], groups)
    fixed = ("seed", "size", "flip", "jitter", "optimizer", "schedule", "train_bn")  # data, not strategy
    return {**DEFAULTS, **{k: getattr(preset, f) for k, f in TRAINING_KEYS.items() if k not in fixed}}


def complete(settings: Mapping) -> dict:
    """``settings`` with every key of ``KEYS``: those left out take ``defaults_for(settings)``."""
    return {**defaults_for(settings), **{k: v for k, v in settings.items() if v is not None and k in DEFAULTS}}


class _Bad(ValueError):
    """A value that cannot be used; its message completes "ignored name=value: ..."."""


def _choice(options) -> Callable[[str, dict], object]:
    def parse(text: str, _so_far: dict):
        if text not in options:
            raise _Bad(f"use one of {', '.join(map(str, options))}")
        return text
    return parse


def _int(lo: int, hi: int, allowed=None) -> Callable[[str, dict], int]:
    def parse(text: str, _so_far: dict) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _Bad(f"a whole number from {lo} to {hi} is needed") from None
        if not lo <= value <= hi or (allowed is not None and value not in allowed):
            raise _Bad(f"use one of {', '.join(map(str, allowed))}" if allowed else f"use {lo} to {hi}")
        return value
    return parse


def _rate(text: str, _so_far: dict) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Bad("a number is needed") from None
    for rate in LEARNING_RATES:  # "0.0003" and "3e-4" name the same choice
        if math.isclose(value, rate, rel_tol=1e-6):
            return rate
    if not (math.isfinite(value) and MIN_LR <= value <= MAX_LR):
        raise _Bad(f"use a rate from {MIN_LR:g} to {MAX_LR:g}, e.g. one of {', '.join(f'{r:g}' for r in LEARNING_RATES)}")
    return value


def _bool(text: str, _so_far: dict) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _Bad("use 1 or 0")


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _subset(options) -> Callable[[str, dict], list[str]]:
    def parse(text: str, _so_far: dict) -> list[str]:
        items = _items(text)
        wrong = [item for item in items if item not in options]
        if wrong:
            shown = ", ".join(item if len(item) <= 20 else item[:20] + "…" for item in wrong[:3])
            raise _Bad(f"{shown} unknown; use any of {', '.join(options)}")
        return list(dict.fromkeys(items))
    return parse


def _backbone_names() -> list[str]:
    return [info.name for info in backbones.list_backbones()]


def _groups(so_far: dict) -> list[str]:
    return backbones.group_names(so_far.get("backbone", DEFAULTS["backbone"]))


def _backbone(text: str, so_far: dict) -> str:
    return _choice(_backbone_names())(text, so_far)


def _freeze(text: str, so_far: dict) -> list[str]:
    return _subset(_groups(so_far))(text, so_far)


def _lr_mult(text: str, so_far: dict) -> dict[str, float]:
    groups = _groups(so_far)
    result = {}
    for item in _items(text):
        name, sep, value = item.partition(":")
        if not sep or name not in groups:
            raise _Bad(f"write group:multiplier pairs with groups among {', '.join(groups)}")
        try:
            number = float(value)
        except ValueError:
            raise _Bad(f"{value!r} is not a number") from None
        if not (math.isfinite(number) and 0 <= number <= 100):
            raise _Bad("multipliers go from 0 to 100")
        result[name] = number
    return result


# Order matters: freeze and lr_mult are checked against the backbone decoded before them.
_PARSERS: dict[str, Callable[[str, dict], object]] = {
    "data": _choice(("source", "target")),
    "per_class": _int(5, 60),
    "backbone": _backbone,
    "pretrained": _bool,
    "strategy": _choice(STRATEGIES),
    "freeze": _freeze,
    "lr_mult": _lr_mult,
    "unfreeze_every": _int(0, 5),
    "epochs": _int(1, 100),
    "lr": _rate,
    "seed": _int(0, 10_000),
    "size": _int(32, 512, IMAGE_SIZES),
    "batch": _int(1, 1024, BATCH_SIZES),
    "patience": _int(0, 100),
    "warmup": _int(0, 100),
    "augment": _bool,
    "flip": _bool,
    "jitter": _bool,
    "optimizer": _choice(("adamw", "sgd")),
    "schedule": _choice(("cosine", "onecycle", "constant")),
    "train_bn": _bool,
    "sal_methods": _subset(SALIENCY_METHODS),
    "kernel": _choice(("median", "multi")),
    "picture": _choice(("pca", "tsne")),
    "lock": _subset(tuple(LOCKABLE)),
    "hide": _subset(tuple(SECTIONS)),
}
assert tuple(_PARSERS) == KEYS


def _number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))  # a rate of 17 digits comes back whole


def _text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{_number(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def encode(settings: Mapping) -> dict[str, str]:
    """Query parameters for ``settings``: the keys of ``KEYS`` whose values differ from what the
    setup's strategy starts with (``defaults_for``)."""
    defaults = defaults_for(settings)
    params = {}
    for key in KEYS:
        value = settings.get(key)
        if value is None or value == defaults[key]:
            continue
        params[key] = _text(value)
    return params


_SHOWN_UNKNOWN = 5  # a link with thousands of made-up parameters gets a few notes, not thousands


def _shown(text: str, most: int = 40) -> str:
    """A link's text as a note quotes it: anyone can write a link, so a 10,000-character name is cut."""
    return text if len(text) <= most else text[:most] + "…"


def decode(params: Mapping) -> tuple[dict, list[str]]:
    """(the settings a link gives, notes on what was ignored and why). Never raises.

    ``params`` maps names to a string or a list of strings (the last one counts, as in
    ``st.query_params``). Keys in ``FOREIGN`` are left alone.
    """
    settings: dict = {}
    notes: list[str] = []
    raw = {}
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            value = value[-1] if value else ""
        raw[str(key)] = str(value)
    unknown = [key for key in raw if key not in _PARSERS and key not in FOREIGN]
    for key in unknown[:_SHOWN_UNKNOWN]:
        notes.append(f"Ignored the unknown link parameter '{_shown(key)}'.")
    if len(unknown) > _SHOWN_UNKNOWN:
        notes.append(f"Ignored {len(unknown) - _SHOWN_UNKNOWN:,} more unknown link parameters.")
    for key, parse in _PARSERS.items():
        if key not in raw:
            continue
        text = raw[key].strip()
        try:
            settings[key] = parse(text, settings)
        except _Bad as exc:
            notes.append(f"Ignored {key}={_shown(text)}: {exc}.")
        except Exception:  # a link is untrusted input: whatever it holds, the app still opens
            notes.append(f"Ignored {key}: its value could not be read.")
    return settings, notes
