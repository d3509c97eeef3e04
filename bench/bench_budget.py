"""A memory bomb refused before any work: a 4 MB ZIP of 19,980 PNGs of 4 x 4 pixels at 224 px.

    python bench/bench_budget.py [--images 19980] [--size 224]

Encoded at 224 px those images take 2.9 GB: before each run had a budget, one click on Train
encoded them in the server (985 MB -> 6,014 MB) before the run even had a slot. Measured in this
process, which plays the server (as the Train page calls ``start_run``):

1. the baseline: encoding 200 of the images at the size, as the server used to, extrapolated to all;
2. the refusal: ``start_run`` with the server's default budget, its time and the server's memory growth;
3. the same run with the budget lifted, waiting for a slot: the server's memory growth while it waits
   (a queued run holds references to the session's images, no encoded copy).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    """This process's resident memory now (not its peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bomb(path: Path, images: int, classes: int = 4) -> None:
    from PIL import Image

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(images):
            buf = io.BytesIO()
            Image.new("RGB", (4, 4), (i % 256, (i // 256) % 256, 90)).save(buf, "PNG")
            zf.writestr(f"class{i % classes}/img{i:05d}.png", buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=19_980)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import gc

    from core import data
    from core.data.encoded import encode_images
    from core.errors import ConfigError
    from core.runs import RunStore
    from core.runs.jobs import start_run
    from core.runs.tasks import TaskQueue
    from core.settings import get_settings
    from core.train.base import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bomb(tmp / "bomb.zip", args.images)
        print(f"ZIP: {args.images:,} PNGs of 4x4 px, {(tmp / 'bomb.zip').stat().st_size / 2**20:.1f} MB")
        before_load = rss_mb()
        began = time.perf_counter()
        ds, _ = data.load_zip(tmp / "bomb.zip")
        train, val = data.split(ds, 0.25, 0)
        print(f"loaded and split in {time.perf_counter() - began:.1f} s, server +{rss_mb() - before_load:.0f} MB "
              f"({len(ds):,} images)")
        config = TrainConfig(image_size=args.size)

        sample = train.subset(range(200))
        began = time.perf_counter()
        encode_images(sample, args.size)
        encode_all = (time.perf_counter() - began) * len(ds) / len(sample)
        print(f"baseline: encoding them in the server would take about {encode_all:.1f} s "
              f"and {len(ds) * 3 * args.size ** 2 / 2**20:,.0f} MB")

        cap = get_settings().max_run_inputs_mb
        store = RunStore(tmp / "store")
        gc.collect()
        before = rss_mb()
        began = time.perf_counter()
        try:
            start_run(store, train, val, backbone="efficientnet_lite0", pretrained=True, config=config,
                      owner="a" * 16, queue=TaskQueue(1, per_person=2))
            print("NOT REFUSED")
        except ConfigError as exc:
            refusal = time.perf_counter() - began
            growth = rss_mb() - before
            print(f"refused with the default budget ({cap:,} MB) in {refusal * 1000:.1f} ms "
                  f"({refusal / encode_all:.5f}x the baseline), server memory +{growth:.1f} MB: {exc}")

        os.environ["TRANSFER_LAB_MAX_RUN_INPUTS_MB"] = "100000"
        queue = TaskQueue(1, per_person=2)
        queue.acquire("another run", threading.Event())
        gc.collect()
        before = rss_mb()
        job = start_run(store, train, val, backbone="efficientnet_lite0", pretrained=True, config=config,
                        owner="a" * 16, queue=queue)
        time.sleep(1.0)
        folder = sorted(p.name for p in store.folder(job.run_id).iterdir())
        print(f"budget lifted, the run waiting for a slot ({job.snapshot().status}): server memory "
              f"+{rss_mb() - before:.1f} MB, its folder holds {folder}")
        job.cancel()
        queue.release("another run")
        job.join(10)


if __name__ == "__main__":
    main()
