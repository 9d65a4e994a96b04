"""Nodule or vessel? A Hessian blob test of the finder's candidate at the candidate's own scale.

The finder's openings cut lung vessels into compact pieces that pass its shape tests (3-8 mm chunks
of a vessel, a bend, a branching): clicked on a vessel, it would measure one as a nodule. What tells
them apart is not the piece but what it is a piece of: a vessel goes on beyond the piece, a nodule
does not. Seen at the candidate's scale (Gaussians of ``BLOB_SIGMA_FRACTIONS`` x its equivalent
radius), the CT at the candidate's centre is

* a **blob** for a nodule: the three eigenvalues of the Hessian negative (bright along every axis) and
  of similar size; vessels attached to a nodule are thinner than it, so a juxtavascular nodule stays
  a blob at its own scale;
* a **tube** for a vessel: one eigenvalue near zero (along the vessel), whatever the piece's shape.

``blobness`` = -l1 / |l3| (eigenvalues sorted by magnitude, l1 the smallest; negative when the
smallest curvature is not bright, -1 when the centre is not on bright tissue at all), the larger of
the scales: about 1 for a sphere, 0.45-0.5 for a 3:1 ellipsoid (the finder's most elongated nodule),
near 0 or below for a tube. Two scales because a lobulated or elongated nodule is a clearer blob at
its full radius, a nodule among other structures at a smaller one. The CT outside the lung is replaced by the lung's own air before the derivatives, so a
nodule against the chest wall, mediastinum or diaphragm is not seen as part of a plate.

How sure the test must be depends on where the point is. On the candidate (within
``ON_CANDIDATE_MM``: the user points at it), only a clear tube is refused (blobness below
``MIN_BLOBNESS_ON``): small real nodules in 2.5-3 mm slices, blurred along z and among vessels, are
often only half blobs. Off the candidate (the finder reached out to a compact piece up to 10 mm
away: the point itself is on something else, most often the vessel the piece belongs to), the piece
must be clearly a blob to be taken for the nodule meant (at least ``MIN_BLOBNESS_OFF``).

The thresholds were chosen on clicks on vessels of the CPTAC chest CT (the training renders'
background) and on training-split insertion renders, and checked on LIDC-IDRI-0001's vessels and
the test split (Training/results/nodule-measurement/README.md, "Clicks on vessels").
"""
from __future__ import annotations

from typing import Optional

import numpy as np

#: The Gaussians' sigmas, as fractions of the candidate's equivalent radius (at least MIN_SIGMA_MM).
BLOB_SIGMA_FRACTIONS = (0.7, 1.0)
MIN_SIGMA_MM = 1.0
#: Below these (at every scale) the candidate is a piece of a tube (a vessel), not a nodule: with the
#: point on the candidate (within ON_CANDIDATE_MM of it), and with the point off it.
MIN_BLOBNESS_ON = 0.15
MIN_BLOBNESS_OFF = 0.4
ON_CANDIDATE_MM = 2.0
VESSEL_WARNING = ("the point is on or near a vessel: what was found {where} is tubular at its own scale (blobness "
                  "{blobness:.2f}, a nodule {minimum:.2f} or more), not a nodule: nothing was measured; place the point on "
                  "the nodule itself, or classify at the click (--at-click)")


def blobness(hu: np.ndarray, lung: np.ndarray, candidate: np.ndarray, spacing_mm: float) -> float:
    """The blobness of ``candidate`` (a boolean mask) in the CT ``hu`` (HU on an isotropic grid of
    ``spacing_mm``, z y x), with ``lung`` the lung mask (the CT outside it reads as the lung's air).

    Scale-normalised Hessian at the candidate's centroid (nearest voxel), Gaussian derivatives by
    separable kernels over +-3 sigma (the grid's edge extended by the lung's air)."""
    # Imported here, not at the top: the finder imports this module. Its lung air (below LUNG_AIR_HU; the
    # median, or AERATED_LUNG_HU when the crop has none) replaces the CT outside the lung.
    from .finder import AERATED_LUNG_HU, LUNG_AIR_HU

    voxels = np.argwhere(candidate)
    radius_mm = (3.0 * len(voxels) / (4.0 * np.pi)) ** (1.0 / 3.0) * spacing_mm
    sigmas = [max(MIN_SIGMA_MM, fraction * radius_mm) / spacing_mm for fraction in BLOB_SIGMA_FRACTIONS]  # voxels
    half = int(np.ceil(3.0 * max(sigmas)))
    centre = np.round(voxels.mean(axis=0)).astype(int)
    low, high = centre - half, centre + half + 1
    inner_low, inner_high = np.maximum(low, 0), np.minimum(high, hu.shape)
    box = tuple(slice(a, b) for a, b in zip(inner_low, inner_high))
    crop_hu, crop_lung = hu[box], lung[box]
    air = crop_lung & (crop_hu < LUNG_AIR_HU)
    fill = float(np.median(crop_hu[air])) if air.any() else AERATED_LUNG_HU
    crop = np.full((2 * half + 1,) * 3, fill, dtype=np.float64)
    crop[tuple(slice(a - l, b - l) for a, b, l in zip(inner_low, inner_high, low))] = np.where(crop_lung, crop_hu, fill)
    best = -1.0
    for sigma in sigmas:
        reach = int(np.ceil(3.0 * sigma))
        window = crop[tuple(slice(half - reach, half + reach + 1) for _ in range(3))]
        values = np.linalg.eigvalsh(_hessian(window, sigma) * sigma ** 2)  # scale-normalised: comparable across sizes
        l1, _l2, l3 = values[np.argsort(np.abs(values))]
        if l3 < 0:  # else not bright at this scale at all
            best = max(best, float(-l1 / abs(l3)))
    return best


def looks_like_vessel(hu: np.ndarray, lung: np.ndarray, candidate: np.ndarray, spacing_mm: float,
                      point_gap_mm: float) -> Optional[str]:
    """The vessel warning when ``candidate`` is a piece of a tube rather than a nodule, else None.

    ``point_gap_mm``: how far the user's point lies outside the candidate (0 inside); the other
    arguments as :func:`blobness`."""
    on_candidate = point_gap_mm <= ON_CANDIDATE_MM
    minimum = MIN_BLOBNESS_ON if on_candidate else MIN_BLOBNESS_OFF
    value = blobness(hu, lung, candidate, spacing_mm)
    if value >= minimum:
        return None
    where = "at the point" if on_candidate else f"{point_gap_mm:.1f} mm from the point"
    return VESSEL_WARNING.format(where=where, blobness=value, minimum=minimum)


def _hessian(crop: np.ndarray, sigma: float) -> np.ndarray:
    """The Hessian (3x3, z y x, per voxel^2) of the Gaussian-smoothed cube at its centre voxel."""
    half = crop.shape[0] // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    g0 = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    g0 /= g0.sum()
    kernels = (g0, -x / sigma ** 2 * g0, (x ** 2 / sigma ** 4 - 1.0 / sigma ** 2) * g0)  # G, G', G''
    # Contract x, then y, then z with each derivative order (separable Gaussian derivatives).
    along_x = [crop @ k for k in kernels]                                   # (z, y) per x-order
    hessian = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            orders = [0, 0, 0]
            orders[i] += 1
            orders[j] += 1
            value = kernels[orders[0]] @ (along_x[orders[2]] @ kernels[orders[1]])
            hessian[i, j] = hessian[j, i] = value
    return hessian
