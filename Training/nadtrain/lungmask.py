"""A lung-parenchyma mask of a chest CT by threshold and connected components, and nodule placements in it.

The method (no learning, documented in Training/README.md):

1. air-like voxels: HU < -400 (lung parenchyma is about -850, soft tissue and blood above -100);
2. 3D connected components (6-connectivity); a component that touches the image's in-plane border
   is the air around the patient (or the padding outside the reconstruction circle) and is removed;
3. the remaining components of at least 10% of the largest one's volume are the lungs (this drops
   bowel gas and small air pockets; the two lungs are kept whether they touch or not);
4. holes are filled slice by slice (vessels, airway walls and nodules inside the lung become lung).

A nodule centre is placeable where the lung mask's distance to its border (in mm, computed once)
is at least the nodule's radius plus a margin, so the whole nodule lies inside the lung (an erosion
by the nodule radius, done once for every radius), and where the local mean HU (Gaussian, 3 mm) is
between -950 and -650: parenchyma, not the trachea's air column nor a dense region.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from notadiagnosis.geometry import PATCH_SIZE, PATCH_SPACING_MM

AIR_THRESHOLD_HU = -400.0
MIN_COMPONENT_FRACTION = 0.10
PARENCHYMA_HU_RANGE = (-950.0, -650.0)
PATCH_HALF_MM = PATCH_SIZE * PATCH_SPACING_MM / 2  # a centre this far from the CT's edges keeps its patch inside


def lung_mask(array_hu: np.ndarray, threshold_hu: float = AIR_THRESHOLD_HU) -> np.ndarray:
    """Boolean lung mask of a CT volume (z, y, x) in HU (see the module docstring for the method)."""
    air = array_hu < threshold_hu
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros(array_hu.shape, dtype=bool)
    border = np.zeros(array_hu.shape, dtype=bool)
    border[:, 0, :] = border[:, -1, :] = True
    border[:, :, 0] = border[:, :, -1] = True
    outside = np.unique(labels[border & air])
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[outside] = 0
    if sizes.max() == 0:
        return np.zeros(array_hu.shape, dtype=bool)
    keep = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.max())
    mask = np.isin(labels, keep)
    for z in range(mask.shape[0]):
        if mask[z].any():
            mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask


@dataclass
class PlacementMap:
    """Candidate nodule centres of a background CT, sorted by decreasing distance to the lung border."""

    indices_zyx: np.ndarray    # (n, 3) int32 voxel indices, sorted by decreasing clearance
    clearance_mm: np.ndarray   # (n,) float32 distance from the voxel to the nearest non-lung voxel

    def candidates(self, radius_mm: float, margin_mm: float = 1.0) -> Tuple[np.ndarray, bool]:
        """Voxel indices where a nodule of ``radius_mm`` fits entirely in the lung.

        Returns (indices (m, 3), fits). When no location is deep enough (a nodule larger than the
        background's lungs allow), the deepest 1% of locations are returned with ``fits=False``.
        """
        need = float(radius_mm) + float(margin_mm)
        # clearance is sorted decreasingly: the candidates are a prefix.
        count = int(np.searchsorted(-self.clearance_mm, -need, side="right"))
        if count > 0:
            return self.indices_zyx[:count], True
        fallback = max(1, len(self.clearance_mm) // 100)
        return self.indices_zyx[:fallback], False

    def band(self, low_mm: float, high_mm: float) -> np.ndarray:
        """Voxel indices whose clearance lies in [low_mm, high_mm] (e.g. centres of nodules touching the pleura)."""
        first = int(np.searchsorted(-self.clearance_mm, -float(high_mm), side="left"))
        last = int(np.searchsorted(-self.clearance_mm, -float(low_mm), side="right"))
        return self.indices_zyx[first:last]


def placement_map(array_hu: np.ndarray, spacing_zyx_mm: Sequence[float], mask: Optional[np.ndarray] = None,
                  min_clearance_mm: float = 2.0, exclude_zyx: Optional[np.ndarray] = None,
                  hu_range: Tuple[float, float] = PARENCHYMA_HU_RANGE, max_candidates: int = 400_000,
                  border_mm: float = PATCH_HALF_MM, seed: int = 0) -> Tuple[PlacementMap, np.ndarray]:
    """Candidate centres in the lung parenchyma with their clearance (distance to the lung border, mm).

    Returns (placements, clearance volume). ``exclude_zyx`` is an optional boolean volume of regions
    to avoid (e.g. a real nodule of the background). Centres closer than ``border_mm`` to the image's
    edges are left out, so the 64 mm patch around them lies inside the CT. Work is done inside the lungs' bounding box
    only; at most ``max_candidates`` centres are kept (a random subset: neighbouring voxels are
    nearly the same placement anyway).
    """
    mask = lung_mask(array_hu) if mask is None else mask
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    clearance = np.zeros(array_hu.shape, dtype=np.float32)
    if not mask.any():
        return PlacementMap(np.zeros((0, 3), np.int32), np.zeros(0, np.float32)), clearance
    box = tuple(slice(max(0, lo - 2), hi + 3) for lo, hi in zip(np.argwhere(mask).min(0), np.argwhere(mask).max(0)))
    clearance[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing).astype(np.float32)
    local_mean = ndimage.gaussian_filter(array_hu[box].astype(np.float32), sigma=3.0 / spacing)
    ok = (clearance[box] >= min_clearance_mm) & (local_mean >= hu_range[0]) & (local_mean <= hu_range[1])
    if exclude_zyx is not None:
        ok &= ~exclude_zyx[box]
    offset = np.array([s.start for s in box], dtype=np.int32)
    indices = np.argwhere(ok).astype(np.int32) + offset
    values = clearance[box][ok]
    edge = np.ceil(border_mm / spacing).astype(np.int32)
    away = np.all((indices >= edge) & (indices <= np.array(array_hu.shape) - 1 - edge), axis=1)
    indices, values = indices[away], values[away]
    if len(values) > max_candidates:
        keep = np.random.default_rng(seed).choice(len(values), max_candidates, replace=False)
        indices, values = indices[keep], values[keep]
    order = np.argsort(-values, kind="stable")
    return PlacementMap(indices_zyx=indices[order], clearance_mm=values[order]), clearance


def noise_std_hu(array_hu: np.ndarray, clearance_mm: np.ndarray, seed: int = 0) -> float:
    """Noise standard deviation (HU) in the lung parenchyma.

    The residual of each voxel from its in-plane 3x3 mean removes anatomy at scales above ~2 voxels;
    for white noise its variance is 8/9 of the noise variance. The median absolute deviation (x1.4826)
    keeps vessels and edges from inflating the estimate. Only voxels at least 5 mm inside the lung
    (``clearance_mm`` from ``placement_map``) count, sampled on at most 40 slices.
    """
    slices = np.flatnonzero((clearance_mm >= 5.0).any(axis=(1, 2)))
    if slices.size == 0:
        return 20.0
    slices = slices[np.linspace(0, slices.size - 1, min(40, slices.size)).astype(int)]
    residuals = []
    for z in slices:
        plane = array_hu[z].astype(np.float32)
        residual = plane - ndimage.uniform_filter(plane, size=3)
        residuals.append(residual[clearance_mm[z] >= 5.0])
    residual = np.concatenate(residuals)
    mad = np.median(np.abs(residual - np.median(residual)))
    return float(1.4826 * mad * np.sqrt(9.0 / 8.0))
