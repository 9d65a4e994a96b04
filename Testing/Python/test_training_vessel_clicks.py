"""`nadtrain vessel-clicks`: clicks on vessels by a rule that knows nothing of the finder."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nadtrain.vesselclicks import vessel_clicks

SPACING = (0.8, 0.8, 2.0)
TUBE_RADIUS_MM = 2.0
NODULE_CENTRE = np.array([0.0, 10.0, 0.0])
NODULE_DIAMETER_MM = 8.0


def chest_with_a_vessel_and_a_nodule() -> sitk.Image:
    """A box of chest wall (40 HU) around lung (-850 HU) with a 4 mm vessel running head to foot (z) inside
    it and an 8 mm nodule beside the vessel."""
    size = np.array([100, 100, 40])
    image = sitk.Image(size.tolist(), sitk.sitkInt16)
    image.SetSpacing(SPACING)
    image.SetOrigin((-(size - 1) * np.array(SPACING) / 2).tolist())
    z, y, x = np.meshgrid(*[np.arange(n) * s + o for n, s, o in zip(size[::-1], SPACING[::-1], image.GetOrigin()[::-1])],
                          indexing="ij")
    hu = np.full(x.shape, 40.0)
    hu[(np.abs(x) < 32) & (np.abs(y) < 32) & (np.abs(z) < 30)] = -850.0
    tissue = (np.hypot(x, y) <= TUBE_RADIUS_MM) & (np.abs(z) < 28)
    tissue |= np.sqrt(x ** 2 + (y - NODULE_CENTRE[1]) ** 2 + z ** 2) <= NODULE_DIAMETER_MM / 2
    hu[tissue] = 40.0
    result = sitk.GetImageFromArray(hu.astype(np.int16))
    result.CopyInformation(image)
    return result


def test_clicks_lie_on_the_vessel_away_from_the_nodule_and_apart():
    ct = chest_with_a_vessel_and_a_nodule()
    before = sitk.GetArrayFromImage(ct).copy()
    nodules = [{"centre_lps": NODULE_CENTRE.tolist(), "diameter_mm": NODULE_DIAMETER_MM}]
    clicks = vessel_clicks(ct, 10, nodules, seed=0)
    assert len(clicks) >= 2
    points = np.array([c["point_lps"] for c in clicks])
    assert np.all(np.hypot(points[:, 0], points[:, 1]) <= TUBE_RADIUS_MM + 0.5)  # on the vessel, not on the nodule nor the wall
    assert np.all(np.linalg.norm(points - NODULE_CENTRE, axis=1) - NODULE_DIAMETER_MM / 2 > 15.0)
    gaps = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(points)) * 1e9
    assert gaps.min() >= 10.0
    assert np.array_equal(sitk.GetArrayFromImage(ct), before)
    # The same seed gives the same clicks.
    assert [c["point_lps"].tolist() for c in vessel_clicks(ct, 10, nodules, seed=0)] == points.tolist()
