"""HU -> model input: the one normalisation shared by training and inference.

The lung window of interest spans air (-1000 HU) to dense soft tissue and small calcifications
(+400 HU). Values are clipped to [hu_min, hu_max] and scaled linearly to [0, 1]; brighter
calcium saturates at 1, which is what radiologists' "calcified" rating needs to see. The constants
are stored in every model card (``preprocessing``) and the classifier reads them from there.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

HU_MIN = -1000.0
HU_MAX = 400.0


def normalize_hu(array_hu: np.ndarray, hu_min: float = HU_MIN, hu_max: float = HU_MAX,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
    """Clip Hounsfield units to ``[hu_min, hu_max]`` and scale to float32 in ``[0, 1]``; written into
    ``out`` (a float32 array of the same shape, e.g. one patch of a batch) when given."""
    if not hu_max > hu_min:
        raise ValueError(f"hu_max ({hu_max}) must be greater than hu_min ({hu_min})")
    scaled = np.subtract(np.asarray(array_hu, dtype=np.float32), np.float32(hu_min), out=out)
    np.divide(scaled, np.float32(hu_max - hu_min), out=scaled)
    return np.clip(scaled, 0.0, 1.0, out=scaled)
