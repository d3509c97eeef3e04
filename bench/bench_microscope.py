"""How long the Microscope's feature visualization takes: ``core.microscope.visualize`` at 128 px, 256 steps.

Run from the repository root: ``python bench/bench_microscope.py [--device cpu|cuda|auto] [--quick]
[--threads 2]``.

For EfficientNet-Lite0 (pretrained) at a middle layer group and at the last one, this times a
whole visualization, and as a baseline in the same process the same number of bare forward and
backward passes of one image up to that layer (what the optimisation cannot avoid); the ratio is
what the Fourier parameterisation, the colour basis and the random transforms add. The issue's
target: at most 20 s for 256 steps at 128 px on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_args, machine_line, resolve_device  # noqa: E402


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target: 2 CPU cores)")
    args = parser.parse_args()
    import torch

    from core import microscope
    from core.hooks import capture
    from core.models.heads import starting_model

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(machine_line(device))
    size, steps = 128, 32 if args.quick else 256
    model = starting_model("efficientnet_lite0", ["a", "b"], image_size=size).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for group in ("stage4", "top"):
        layer = microscope.layer_module(model, group)
        microscope.visualize(model, group, 0, size=size, steps=4, seed=0)  # warm-up
        x = torch.rand(1, 3, size, size, device=device, requires_grad=True)
        started = time.perf_counter()
        for _ in range(steps):
            capture(model, layer, x)[0, 0].mean().backward()
        bare = time.perf_counter() - started
        started = time.perf_counter()
        microscope.visualize(model, group, 3, size=size, steps=steps, seed=0)
        took = time.perf_counter() - started
        print(f"{group} ({layer}): visualize {steps} steps at {size} px: {took:.1f} s; "
              f"{steps} bare forward+backward passes: {bare:.1f} s; ratio {took / bare:.2f} "
              f"({args.threads} torch threads)")


if __name__ == "__main__":
    main()
