"""Draw the app's icon, assets/icon.png: a small network whose last layer (the new head) is orange.

Run once after changing the drawing: `python scripts/draw_icon.py`. The PNG is committed, so
the app never fetches an icon from the internet.
"""

from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256  # drawn large, saved at 128 px for smooth edges
OUT = Path(__file__).resolve().parent.parent / "assets" / "icon.png"


def draw() -> Image.Image:
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((8, 8, SIZE - 8, SIZE - 8), radius=48, fill=(24, 52, 102))
    columns = [(56, [64, 104, 152, 192]), (128, [84, 128, 172]), (200, [104, 152])]
    frozen, head = (150, 190, 240), (255, 140, 40)
    for (x0, ys0), (x1, ys1) in pairwise(columns):
        colour = head if x1 == columns[-1][0] else frozen
        for y0 in ys0:
            for y1 in ys1:
                d.line((x0, y0, x1, y1), fill=colour + (170,), width=5)
    for x, ys in columns:
        colour = head if x == columns[-1][0] else frozen
        for y in ys:
            d.ellipse((x - 15, y - 15, x + 15, y + 15), fill=colour, outline=(255, 255, 255), width=4)
    return img.resize((128, 128), Image.LANCZOS)


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    draw().save(OUT, optimize=True)
    print(f"wrote {OUT}")
