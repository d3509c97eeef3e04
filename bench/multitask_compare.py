"""Shared vs separate: one model with a head per task against one model per task, on the
multi-task demo and on real handwriting (digit / parity / magnitude), with a frozen backbone
(feature extraction) and with the last stage fine-tuned. Prints one table per setting.

    python -m bench.multitask_compare [--quick]
"""

from __future__ import annotations

import sys

from core import data, models
from core.data.samples import digits_multitask
from core.methods.multitask import compare_shared_separate
from core.train.strategies import strategy_config


def table(title: str, result) -> str:
    lines = [f"### {title}", "", "| task | shared | separate | shared - separate |", "| --- | --- | --- | --- |"]
    for row in result.rows():
        lines.append(f"| {row['task']} | {row['shared']:.3f} | {row['separate']:.3f} | {row['difference']:+.3f} |")
    lines.append(f"| parameters (all / trainable) | {result.shared_params / 1e6:.2f} M / "
                 f"{result.shared_trainable / 1e6:.2f} M | {result.separate_params / 1e6:.2f} M / "
                 f"{result.separate_trainable / 1e6:.2f} M | |")
    lines.append(f"| training time | {result.shared_seconds:.1f} s | {result.separate_seconds:.1f} s | |")
    return "\n".join(lines)


def main(quick: bool = False) -> None:
    backbone = models.load()
    groups = [g.name for g in backbone.layer_groups]
    sets = {
        "multi-task demo (shape / colour / size), 80 images": (data.demo_multitask(per_class=20, seed=0), 128),
        "digits (digit / parity / magnitude), 300 images": (digits_multitask(per_class=30, seed=0), 64),
    }
    settings = {
        "frozen backbone, linear heads": strategy_config("feature_extraction", groups, epochs=5 if quick else 15,
                                                         early_stopping=0, batch_size=16, lr=1e-2),
        "last stage fine-tuned": strategy_config("last_stage", groups, epochs=3 if quick else 8, early_stopping=0,
                                                 warmup_epochs=1),
    }
    for set_name, (ds, size) in sets.items():
        train, val = data.split(ds, 0.2, seed=0)
        for setting, config in settings.items():
            config.image_size = size
            result = compare_shared_separate(backbone, train, val, config)
            print(table(f"{set_name}: {setting}", result), flush=True)
            print(flush=True)


if __name__ == "__main__":
    main("--quick" in sys.argv)
