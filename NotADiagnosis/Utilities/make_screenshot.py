"""Render the extension's catalog picture: Resources/Screenshots/NotADiagnosis-results.png.

Not a capture of a Slicer window (no Slicer can run where this was made): it draws what the module
shows — an axial slice of the library's synthetic chest CT with the saliency overlay, the points and
the results table — from the same library calls the module makes, with the bundled default model.
Replace it with a real Slicer screenshot when one is taken. Run: ``python NotADiagnosis/Utilities/make_screenshot.py``.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from notadiagnosis import Classifier  # noqa: E402
from notadiagnosis.disclaimer import REMINDER  # noqa: E402
from notadiagnosis.synthetic import make_synthetic_chest_ct  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[1] / "Resources" / "Screenshots" / "NotADiagnosis-results.png"


def main() -> Path:
    ct, nodules = make_synthetic_chest_ct(seed=0)
    classifier = Classifier.load(device="cpu")
    points = [n["center_lps"] for n in nodules]
    predictions = classifier.predict(ct, points)
    target = max(range(len(nodules)), key=lambda i: nodules[i]["diameter_mm"])
    saliency = classifier.saliency(ct, points[target])
    # Saliency onto the CT grid for display (the module shows it as a foreground volume the same way).
    overlay = sitk.GetArrayFromImage(sitk.Resample(saliency, ct, sitk.Transform(), sitk.sitkLinear, 0.0))
    index = ct.TransformPhysicalPointToIndex(points[target])
    axial = sitk.GetArrayViewFromImage(ct)[index[2]]

    figure, (image_axis, table_axis) = plt.subplots(1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [1.15, 1]})
    figure.patch.set_facecolor("#1e1e1e")
    image_axis.imshow(axial, cmap="gray", vmin=-1000, vmax=400)
    glow = np.ma.masked_less(overlay[index[2]], 0.2)
    image_axis.imshow(glow, cmap="inferno", alpha=0.7, vmin=0, vmax=1)
    for nodule in nodules:
        i = ct.TransformPhysicalPointToIndex(nodule["center_lps"])
        if abs(i[2] - index[2]) <= 3:
            image_axis.plot(i[0], i[1], "+", color="#ff4040", markersize=14, markeredgewidth=2)
    image_axis.set_title("Axial slice, saliency overlay (synthetic chest CT)", color="white")
    image_axis.axis("off")
    table_axis.axis("off")
    rows = [[n["name"], f"{p.probability:.3f}", f"±{p.uncertainty:.3f}", "; ".join(p.warnings) or "-"]
            for n, p in zip(nodules, predictions)]
    table = table_axis.table(cellText=rows, colLabels=["Point", "Probability", "Uncertainty", "Warning"],
                             loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width([0, 1, 2, 3])
    table.scale(1.0, 1.6)
    table_axis.set_title(f"Results table — model {classifier.name} on {classifier.device_description}", color="white")
    figure.text(0.5, 0.03, REMINDER, ha="center", color="#ff8080", fontsize=11)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, dpi=100, facecolor=figure.get_facecolor())
    return OUTPUT


if __name__ == "__main__":
    print(main())
