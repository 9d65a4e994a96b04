"""The module's sample: the library's synthetic chest CT with a point on each of its nodules.

Generated on this computer (no download), so that a new user can press Classify within a minute of
installing. Offered through Slicer's Sample Data module (category "Not a Diagnosis") and by the
panel's *Load sample* button; the self-test builds its scene with the same function.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

CATEGORY = "Not a Diagnosis"
SAMPLE_NAME = "NotADiagnosisSyntheticChestCT"
SAMPLE_TITLE = "Synthetic chest CT with nodules"
VOLUME_NAME = "Synthetic chest CT"
POINTS_NAME = "Synthetic nodules"
SEED = 0


def load_sample(scene, seed: int = SEED) -> Tuple[object, object, List[dict]]:
    """Add the synthetic CT and a point list on its nodules to ``scene``; (volume, points, nodules).

    ``nodules`` are the library's descriptions (name, centre in LPS, diameter, kind).
    """
    from notadiagnosis.geometry import lps_to_ras
    from notadiagnosis.synthetic import make_synthetic_chest_ct

    from .volumes import add_volume_from_image

    image, nodules = make_synthetic_chest_ct(seed=seed)
    volume = add_volume_from_image(scene, image, VOLUME_NAME)
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(POINTS_NAME))
    for nodule in nodules:
        r, a, s = lps_to_ras(np.asarray(nodule["center_lps"], dtype=float))
        points.AddControlPoint(float(r), float(a), float(s), str(nodule["name"]))
    points.CreateDefaultDisplayNodes()
    return volume, points, nodules
