"""Draw the module and extension icon: Resources/Icons/NotADiagnosis.png (128 x 128 RGBA).

An axial chest CT slice in miniature: body outline, two dark lungs, the spine, a nodule marked by a
point (the Slicer control-point cross) and a warm saliency glow around it. Drawn at 4x and
downsampled for smooth edges. Run from anywhere: ``python NotADiagnosis/Utilities/make_icon.py``.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE_PX = 128
SCALE = 4  # supersampling factor
OUTPUT = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "NotADiagnosis.png"


def _box(cx: float, cy: float, rx: float, ry: float) -> tuple:
    """Bounding box of an ellipse given in 128-px icon units, scaled to the canvas."""
    return tuple(int(round(v * SCALE)) for v in (cx - rx, cy - ry, cx + rx, cy + ry))


def draw_icon() -> Image.Image:
    canvas = SIZE_PX * SCALE
    icon = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)

    # Rounded dark tile, like a viewer background.
    draw.rounded_rectangle((0, 0, canvas - 1, canvas - 1), radius=22 * SCALE, fill=(24, 30, 40, 255))
    # Body (soft tissue), lungs (air), spine (bone).
    draw.ellipse(_box(64, 66, 54, 42), fill=(150, 150, 150, 255))
    draw.ellipse(_box(64, 66, 49, 37), fill=(118, 118, 118, 255))
    draw.ellipse(_box(40, 63, 20, 30), fill=(34, 36, 42, 255))
    draw.ellipse(_box(88, 63, 20, 30), fill=(34, 36, 42, 255))
    draw.ellipse(_box(64, 96, 9, 8), fill=(236, 236, 228, 255))
    draw.ellipse(_box(64, 60, 7, 9), fill=(132, 132, 132, 255))  # mediastinum

    # Saliency glow around the nodule in the left lung (image right), blurred.
    glow = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    glow_draw = ImageDraw.Draw(glow)
    glow_draw.ellipse(_box(86, 54, 15, 15), fill=(255, 120, 0, 170))
    glow_draw.ellipse(_box(86, 54, 8, 8), fill=(255, 220, 40, 220))
    glow = glow.filter(ImageFilter.GaussianBlur(5 * SCALE))
    icon = Image.alpha_composite(icon, glow)
    draw = ImageDraw.Draw(icon)

    # The nodule and the control point placed on it.
    draw.ellipse(_box(86, 54, 5, 5), fill=(210, 210, 205, 255))
    cross = (255, 255, 255, 255)
    for (x0, y0, x1, y1) in ((74, 54, 80, 54), (92, 54, 98, 54), (86, 42, 86, 48), (86, 60, 86, 66)):
        draw.line(tuple(int(v * SCALE) for v in (x0, y0, x1, y1)), fill=cross, width=3 * SCALE)

    # A question mark: a second opinion, not an answer.
    draw.ellipse(_box(27, 27, 16, 16), fill=(176, 0, 32, 255))
    draw.arc(_box(27, 23, 6, 6), start=180, end=90, fill=(255, 255, 255, 255), width=3 * SCALE)
    draw.line(tuple(int(v * SCALE) for v in (33, 23, 27, 29)), fill=(255, 255, 255, 255), width=3 * SCALE)
    draw.line(tuple(int(v * SCALE) for v in (27, 29, 27, 32)), fill=(255, 255, 255, 255), width=3 * SCALE)
    draw.ellipse(_box(27, 37, 2, 2), fill=(255, 255, 255, 255))

    return icon.resize((SIZE_PX, SIZE_PX), Image.LANCZOS)


def main() -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    draw_icon().save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
