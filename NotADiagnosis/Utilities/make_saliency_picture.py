"""Render how Slicer's slice view shows the saliency overlay: Resources/Screenshots/saliency-overlay.png.

Built with Slicer's own display code (slicer-core's real ``vtkMRMLScalarVolumeDisplayNode``
pipeline: window/level, threshold, colour table) for both layers, the module's logic for the
overlay (the synthetic chest CT, its largest nodule, the bundled model), and the slice view's
blending rule (the foreground layer over the background at the layer opacity, where the
foreground's rendered alpha is not zero). Left: the CT alone; middle: with the overlay as the
module shows it; right: the colour ramp with the threshold. This is the check that the overlay reads
as intended once Slicer has turned the colour table's alpha into opaque/transparent.

Run: ``.venv/bin/python NotADiagnosis/Utilities/make_saliency_picture.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MODULE_DIR = Path(__file__).resolve().parents[1]
OUTPUT = MODULE_DIR / "Resources" / "Screenshots" / "saliency-overlay.png"
sys.path.insert(0, str(MODULE_DIR))


def rendered_rgba(volume_node) -> np.ndarray:
    """(k, j, i, 4) uint8: the volume's slice view layer as Slicer's display pipeline renders it."""
    from nadslicer.results import rendered_layer

    rgba = rendered_layer(volume_node)
    if rgba.shape[-1] == 2:  # grey + alpha (a grey colour map)
        rgba = np.concatenate([np.repeat(rgba[..., :1], 3, axis=-1), rgba[..., 1:]], axis=-1)
    return rgba


def blend(background: np.ndarray, foreground: np.ndarray, opacity: float) -> np.ndarray:
    """The slice view's rule: foreground over background at ``opacity`` where the foreground is not transparent."""
    weight = opacity * foreground[..., 3:4].astype(float) / 255.0
    return (background[..., :3] * (1.0 - weight) + foreground[..., :3] * weight).astype(np.uint8)


def main() -> Path:
    import slicer
    from PIL import Image, ImageDraw

    from nadslicer.logic import ClassificationOptions, classify
    from nadslicer.results import SALIENCY_DISPLAY_THRESHOLD, SALIENCY_LAYER_OPACITY, saliency_color
    from nadslicer.sample_data import load_sample

    scene = slicer.vtkMRMLScene()
    volume, points, nodules = load_sample(scene)
    largest = max(range(len(nodules)), key=lambda index: nodules[index]["diameter_mm"])
    for index in reversed(range(points.GetNumberOfControlPoints())):
        if index != largest:
            points.RemoveNthControlPoint(index)
    result = classify(volume, points, ClassificationOptions(device="CPU", tta=False, saliency=True))
    ct_display = volume.GetDisplayNode()
    ct_display.SetAutoWindowLevel(False)
    ct_display.SetWindowLevel(1400.0, -300.0)  # Slicer's CT-lung-like preset
    grey = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Grey")
    grey.SetTypeToGrey()
    ct_display.SetAndObserveColorNodeID(grey.GetID())
    background = rendered_rgba(volume)
    overlay = rendered_rgba(result.saliency_node)

    # The overlay is a crop of the CT's lattice: its first voxel's index in the CT places it.
    import vtk

    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)

    def ct_index(ras):
        return [int(round(value)) for value in ras_to_ijk.MultiplyPoint(list(ras) + [1.0])[:3]]

    i0, j0, k0 = ct_index(result.saliency_node.GetOrigin())
    full = np.zeros_like(background)
    ks, js, is_ = overlay.shape[:3]
    full[k0:k0 + ks, j0:j0 + js, i0:i0 + is_] = overlay  # the library keeps the crop inside the CT
    position = [0.0, 0.0, 0.0]
    points.GetNthControlPointPositionWorld(0, position)
    centre = ct_index(position)
    k = centre[2]
    window = (slice(max(centre[1] - 70, 0), centre[1] + 70), slice(max(centre[0] - 70, 0), centre[0] + 70))
    left = background[k][window][..., :3]
    middle = blend(background[k][window], full[k][window], SALIENCY_LAYER_OPACITY)
    panels = [np.ascontiguousarray(left), np.ascontiguousarray(middle)]
    height = panels[0].shape[0]
    ramp = np.zeros((height, 40, 3), dtype=np.uint8)
    for row in range(height):
        t = 1.0 - row / (height - 1)
        ramp[row] = (np.array(saliency_color(t)) * 255).astype(np.uint8) if t >= SALIENCY_DISPLAY_THRESHOLD else 0
    picture = np.concatenate([panels[0], np.full((height, 6, 3), 30, np.uint8), panels[1],
                              np.full((height, 6, 3), 30, np.uint8), ramp], axis=1)
    image = Image.fromarray(picture).resize((picture.shape[1] * 3, picture.shape[0] * 3), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), "CT", fill=(255, 255, 255))
    draw.text((panels[0].shape[1] * 3 + 24, 6), f"saliency over CT ({result.labels[0]})", fill=(255, 255, 255))
    draw.text((image.width - 118, 6), "1.0", fill=(0, 0, 0))
    draw.text((image.width - 118, int(image.height * (1 - SALIENCY_DISPLAY_THRESHOLD)) - 12),
              f"{SALIENCY_DISPLAY_THRESHOLD}", fill=(255, 255, 255))
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    image.save(OUTPUT)
    visible = full[k][window][..., 3] > 0
    print(f"{OUTPUT}: {int(visible.sum())} overlay pixels on the slice; rendered alpha values "
          f"{sorted(set(np.unique(full[k][window][..., 3]).tolist()))}; distinct overlay colours "
          f"{len({tuple(c) for c in full[k][window][visible][:, :3]})}")
    return OUTPUT


if __name__ == "__main__":
    main()
