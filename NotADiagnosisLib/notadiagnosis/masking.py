"""Nodule-masked input: a patch whose surroundings are replaced by a constant lung-parenchyma value.

The network's answer moves with what surrounds the nodule (vessels, the pleura, the background CT's
noise). With ``input_mask = "nodule"`` the network sees only the nodule and a margin around it: the
library's own nodule finder (:func:`notadiagnosis.finder.find_nodule`) segments the nodule from the
patch's centre voxel, on the patch alone, and every voxel farther than ``margin_mm`` from that
segmentation becomes ``FILL_HU``. Training and inference call the same :func:`mask_surroundings` on
the same 64³ HU patch, so there is no train/serve skew.

When the finder finds no nodule (faint ground glass it misses, a click beside the nodule), the patch
keeps a ball of ``NOT_FOUND_RADIUS_MM`` around its centre: the finder's own search radius, the
neighbourhood it looked in. The result says which rule applied (``found``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from .finder import SEARCH_RADIUS_MM, _ball, find_nodule
from .geometry import PATCH_SPACING_MM, patch_reference

#: The input masks a model card may name (``preprocessing.input_mask``); "none" is the plain patch.
INPUT_MASKS = ("none", "nodule")
#: Margin (mm) around the finder's segmentation that keeps its voxels: the nodule's edge, its partial-volume
#: rim and the first millimetres of lung, which readers look at for the margin's shape.
DEFAULT_MARGIN_MM = 4.0
#: What the surroundings become: aerated lung parenchyma (the renders' placements lie in -950..-650 HU).
FILL_HU = -850.0
#: No nodule found: the ball kept around the patch's centre (the finder's search radius).
NOT_FOUND_RADIUS_MM = SEARCH_RADIUS_MM


@dataclass(frozen=True)
class KeptRegion:
    """The voxels of a patch that :func:`apply_kept_region` keeps, and whether the finder found the nodule."""

    keep: np.ndarray  # bool (z, y, x), the patch's shape
    found: bool


def kept_region(patch_hu: np.ndarray, margin_mm: float = DEFAULT_MARGIN_MM,
                spacing_mm: float = PATCH_SPACING_MM) -> KeptRegion:
    """The voxels within ``margin_mm`` of the nodule the finder segments from the centre voxel of the
    cubic HU patch ``patch_hu`` (z, y, x; voxel ``size // 2`` is the centre, as ``extract_patch`` makes
    it), or, when it finds none, within ``NOT_FOUND_RADIUS_MM`` of that centre. The patch is not modified."""
    patch = np.asarray(patch_hu)
    if patch.ndim != 3 or len(set(patch.shape)) != 1:
        raise ValueError(f"a cubic 3D patch is needed, got shape {patch.shape}")
    if not margin_mm >= 0:
        raise ValueError(f"margin_mm must be 0 or more, got {margin_mm}")
    reference = patch_reference(np.zeros(3), size=patch.shape[0], spacing=spacing_mm)
    image = sitk.GetImageFromArray(patch.astype(np.float32, copy=False))
    image.CopyInformation(reference)
    segmentation, _warnings = find_nodule(image, np.zeros(3))
    if segmentation is None:
        centre = np.array(patch.shape) // 2  # the centre voxel, as extract_patch makes it
        return KeptRegion(keep=_ball(patch.shape, centre, NOT_FOUND_RADIUS_MM, np.full(3, spacing_mm)), found=False)
    # The finder's label map lies on a crop of the patch's own grid: nearest neighbour puts it back in place.
    nodule = sitk.Resample(segmentation.mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return KeptRegion(keep=_within(sitk.GetArrayFromImage(nodule) > 0, margin_mm, spacing_mm), found=True)


def apply_kept_region(patch_hu: np.ndarray, keep: np.ndarray, fill_hu: float = FILL_HU) -> np.ndarray:
    """A copy of ``patch_hu`` with every voxel outside ``keep`` set to ``fill_hu`` (same dtype)."""
    patch = np.asarray(patch_hu)
    if keep.shape != patch.shape:
        raise ValueError(f"the kept region's shape {keep.shape} is not the patch's {patch.shape}")
    return np.where(keep, patch, np.asarray(fill_hu).astype(patch.dtype))


def mask_surroundings(patch_hu: np.ndarray, margin_mm: float = DEFAULT_MARGIN_MM,
                      spacing_mm: float = PATCH_SPACING_MM) -> Tuple[np.ndarray, bool]:
    """The nodule-masked patch (a copy, the input's dtype) and whether the finder found the nodule:
    :func:`kept_region` then :func:`apply_kept_region` with ``FILL_HU``."""
    region = kept_region(patch_hu, margin_mm, spacing_mm)
    return apply_kept_region(patch_hu, region.keep), region.found


def _within(mask: np.ndarray, margin_mm: float, spacing_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``margin_mm`` of a voxel centre of ``mask`` (the mask included).
    Worked on the mask's box grown by the margin: nothing beyond it can be that close."""
    grow = int(np.ceil(margin_mm / spacing_mm)) + 1
    indices = np.argwhere(mask)
    low = np.maximum(indices.min(axis=0) - grow, 0)
    high = np.minimum(indices.max(axis=0) + grow + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    crop = sitk.GetImageFromArray(mask[box].astype(np.uint8))
    crop.SetSpacing([float(spacing_mm)] * 3)
    # Outside distances only (inside is 0 or negative): squared, compared with the squared margin, exact on voxel centres.
    distance2 = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(crop, insideIsPositive=False, squaredDistance=True,
                                                                    useImageSpacing=True))
    keep = np.zeros(mask.shape, dtype=bool)
    keep[box] = (distance2 <= margin_mm ** 2 + 1e-6) | mask[box]
    return keep


__all__ = ["DEFAULT_MARGIN_MM", "FILL_HU", "INPUT_MASKS", "KeptRegion", "NOT_FOUND_RADIUS_MM", "apply_kept_region",
           "kept_region", "mask_surroundings"]
