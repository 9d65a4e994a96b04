"""Physical-space geometry: RAS/LPS conversion and patch extraction.

Everything here works in patient millimetres. DICOM and ITK speak LPS (x to the patient's Left, y to
Posterior, z to Superior); 3D Slicer speaks RAS. A patch is the cube of ``size`` voxels at ``spacing``
mm centred on a point, axis-aligned to the patient's LPS axes whatever the CT's own direction, so the
model always sees the same anatomy orientation. Only the cube is resampled, never the whole CT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError, PointOutsideImageError

PATCH_SIZE = 64
PATCH_SPACING_MM = 1.0
AIR_HU = -1000.0
# Points exactly on the CT's outer face must not be refused for a rounding error.
_INDEX_TOLERANCE = 1e-6
_OUTSIDE_SENTINEL = -1.0e30

ArrayLike = Union[Sequence[float], np.ndarray]


def ras_to_lps(points: ArrayLike) -> np.ndarray:
    """Convert points (shape (3,) or (N, 3)) from RAS to LPS millimetres: x and y change sign."""
    converted = np.array(points, dtype=np.float64, copy=True)
    if converted.shape[-1] != 3:
        raise InputError(f"Points must have 3 coordinates each, got shape {converted.shape}.")
    converted[..., 0] *= -1.0
    converted[..., 1] *= -1.0
    return converted


def lps_to_ras(points: ArrayLike) -> np.ndarray:
    """Convert points (shape (3,) or (N, 3)) from LPS to RAS millimetres (the same sign flip)."""
    return ras_to_lps(points)


@dataclass
class Patch:
    """A resampled cube around a point.

    ``array_hu`` is float32 (z, y, x) in Hounsfield units; ``image`` carries the same voxels with
    their geometry (origin, 1 mm spacing, identity direction), so a map computed on the patch can be
    resampled back into the CT's space. ``outside_fraction`` is the share of the cube that fell
    outside the CT and was filled with air (-1000 HU).
    """

    array_hu: np.ndarray
    image: sitk.Image
    outside_fraction: float
    point_lps: np.ndarray


def patch_reference(point_lps: ArrayLike, size: int = PATCH_SIZE, spacing: float = PATCH_SPACING_MM) -> sitk.Image:
    """Return an empty float32 grid of ``size``³ voxels at ``spacing`` mm, LPS-aligned.

    The voxel of index ``size // 2`` along each axis sits exactly on ``point_lps``.
    """
    point = _as_point(point_lps)
    reference = sitk.Image([int(size)] * 3, sitk.sitkFloat32)
    reference.SetSpacing([float(spacing)] * 3)
    reference.SetDirection(np.eye(3).ravel().tolist())
    reference.SetOrigin((point - (size // 2) * float(spacing)).tolist())
    return reference


def continuous_index(image: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (i, j, k) of LPS points (N, 3) in ``image``; vectorised."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    index_to_physical = direction * spacing  # columns scaled by spacing
    offsets = np.asarray(points_lps, dtype=np.float64) - np.array(image.GetOrigin(), dtype=np.float64)
    return np.linalg.solve(index_to_physical, offsets.T).T


def is_inside(image: sitk.Image, point_lps: ArrayLike) -> bool:
    """True when the point lies within the CT's voxels (half a voxel beyond the outer centres counts)."""
    index = continuous_index(image, _as_point(point_lps)[None])[0]
    size = np.array(image.GetSize(), dtype=np.float64)
    return bool(np.all(index >= -0.5 - _INDEX_TOLERANCE) and np.all(index <= size - 0.5 + _INDEX_TOLERANCE))


def extract_patch(
    image: sitk.Image,
    point_lps: ArrayLike,
    size: int = PATCH_SIZE,
    spacing: float = PATCH_SPACING_MM,
) -> Patch:
    """Resample the ``size``³ cube at ``spacing`` mm centred on ``point_lps`` from a CT.

    Works for any spacing, origin and direction (oblique included): linear interpolation in physical
    space, the cube axis-aligned to LPS, voxels outside the CT set to -1000 HU. Voxels that are not
    finite (NaN or infinity in a float CT, and their interpolated neighbours) are read as air too,
    as training's dataset writer does. Raises :class:`PointOutsideImageError` when the point itself
    is outside the CT.
    """
    check_image(image)
    point = _as_point(point_lps)
    if not is_inside(image, point):
        raise PointOutsideImageError(
            f"The point (LPS {point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f} mm) lies outside the CT; "
            "place it inside the image (and check RAS vs LPS)."
        )
    reference = patch_reference(point, size, spacing)
    # Voxels outside the CT get a sentinel no CT can hold, so ITK's own inside/outside decision
    # gives the outside fraction for free; they then become air.
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, _OUTSIDE_SENTINEL, sitk.sitkFloat32)
    array_hu = sitk.GetArrayFromImage(resampled)
    outside = array_hu == np.float32(_OUTSIDE_SENTINEL)
    outside_fraction = float(outside.mean())
    if outside_fraction == 1.0:
        # The point is inside, so at least its own voxel must be: ITK could not invert the geometry.
        raise InputError(
            "The CT's direction matrix cannot be used (degenerate or not orthonormal); fix the image header."
        )
    not_finite = ~np.isfinite(array_hu)
    if outside_fraction > 0.0 or not_finite.any():
        array_hu[outside | not_finite] = AIR_HU
        resampled = sitk.GetImageFromArray(array_hu)
        resampled.CopyInformation(reference)
    return Patch(array_hu=array_hu, image=resampled, outside_fraction=outside_fraction, point_lps=point)


def _as_point(point_lps: ArrayLike) -> np.ndarray:
    point = np.asarray(point_lps, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise InputError(f"A point must be three finite millimetre coordinates, got {point_lps!r}.")
    return point


def check_image(image: sitk.Image) -> None:
    """Raise :class:`InputError` unless ``image`` is a single-channel 3D SimpleITK image."""
    if not isinstance(image, sitk.Image):
        hint = " (read the file first, e.g. with notadiagnosis.readers.read_ct)" if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else ""
        raise InputError(f"Expected a SimpleITK image, got {type(image).__name__}{hint}.")
    if image.GetDimension() != 3:
        raise InputError(f"The CT must be a 3D image, got {image.GetDimension()}D.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("The CT has several components per voxel; give a single-channel (grey-level) CT.")
