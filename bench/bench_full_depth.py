"""What full depth costs: loading 12-bit scans (DICOM, 16-bit PNG) against the same images as 8-bit PNG,
and what a window change, a split and the model's input cost on such a dataset.

    python bench/bench_full_depth.py [--images 200] [--size 512] [--quick]

Every figure is a ratio to loading the 8-bit PNG ZIP in the same process: a window change re-windows
every full-depth image, a split must not (subsets keep their dataset's views).
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_args, fmt_ratio, median_time, print_table  # noqa: E402


def scans(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        img = rng.normal(900, 120, (size, size)) + 2400 * (((y - size / 2) ** 2 + (x - size / 2) ** 2) < (size / 4 + i % 7) ** 2)
        out.append(np.clip(img, 0, 4095).astype(np.uint16))
    return out


def archive(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in files:
            zf.writestr(name, payload)
    return buf.getvalue()


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    n, size = (20, 128) if args.quick else (args.images, args.size)

    from core import data
    from tests.toys import dicom_bytes

    images = scans(n, size)
    names = [f"{('a', 'b')[i % 2]}/{i:04d}" for i in range(n)]
    eight = archive([(f"{p}.png", png((img >> 4).astype(np.uint8))) for p, img in zip(names, images, strict=True)])
    sixteen = archive([(f"{p}.png", png(img)) for p, img in zip(names, images, strict=True)])
    dicoms = archive([(f"{p}.dcm", dicom_bytes(img)) for p, img in zip(names, images, strict=True)])

    base = median_time(lambda: data.load_zip(eight))
    ds = data.load_zip(dicoms)[0]
    rows = [
        ["load 8-bit PNG ZIP (baseline)", f"{base:.3f}", fmt_ratio(1.0)],
        ["load 16-bit PNG ZIP", *_row(lambda: data.load_zip(sixteen), base)],
        ["load DICOM ZIP", *_row(lambda: data.load_zip(dicoms), base)],
        ["change the window", *_row(lambda: ds.with_window(data.Window(500, 3000)), base)],
        ["split (keeps the views)", *_row(lambda: data.split(ds, 0.25, 0), base)],
        ["model input at 224 px", *_row(lambda: data.encode_images(ds, 224), base)],
    ]
    print_table(["step", "seconds", "vs 8-bit load"], rows,
                title=f"{n} images of {size}×{size}, 12 bits (DICOM and 16-bit PNG) or 8 bits (PNG)")


def _row(fn, base: float) -> list[str]:
    t = median_time(fn)
    return [f"{t:.3f}", fmt_ratio(t / base)]


if __name__ == "__main__":
    main()
