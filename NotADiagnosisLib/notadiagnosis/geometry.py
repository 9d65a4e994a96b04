"""Physical-space geometry: RAS/LPS conversion and patch extraction.

Everything here works in patient millimetres. DICOM and ITK speak LPS (x to the patient's Left, y to
Posterior, z to Superior); 3D Slicer speaks RAS. A patch is the cube of ``size`` voxels at ``spacing``
mm centred on a point, axis-aligned to the patient's LPS axes whatever the CT's own direction, so the
model always sees the same anatomy orientation. Only the cube is resampled, never the whole CT.

Resampling is ITK's linear interpolation (``sitk.Resample``). When the CT's axes are the patch's
axes (direction matrix diagonal with entries ±1, as almost every CT's is), the same interpolation is
done separably in numpy on the few voxels the cube needs: the same neighbours, the same clamping at
the CT's faces and the same arithmetic in the same order, in double precision, so the values are
ITK's (a test compares them), at about a third of ITK's CPU time. Anything else goes to ITK.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError, PointOutsideImageError

PATCH_SIZE = 64
PATCH_SPACING_MM = 1.0
AIR_HU = -1000.0
# Points exactly on the CT's outer face must not be refused for a rounding error.
_INDEX_TOLERANCE = 1e-6
# What ITK's resampling writes outside the CT, to tell those voxels apart (no CT holds it).
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
    their geometry (origin, ``spacing_mm`` spacing, identity direction), so a map computed on the
    patch can be resampled back into the CT's space (built on first use: classification never needs
    it). ``outside_fraction`` is the share of the cube that fell outside the CT and was filled with
    air (-1000 HU).
    """

    array_hu: np.ndarray
    outside_fraction: float
    point_lps: np.ndarray
    spacing_mm: float = field(default=PATCH_SPACING_MM)

    @cached_property
    def image(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array_hu)
        origin, spacing, direction = _patch_grid(self.point_lps, self.array_hu.shape[0], self.spacing_mm)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return image


def _patch_grid(point_lps: np.ndarray, size: int, spacing: float) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
    """Origin, spacing and direction of the ``size``³ LPS-aligned grid whose voxel ``size // 2`` is ``point_lps``."""
    origin = tuple((np.asarray(point_lps, dtype=np.float64) - (int(size) // 2) * float(spacing)).tolist())
    return origin, (float(spacing),) * 3, tuple(np.eye(3).ravel().tolist())


def patch_reference(point_lps: ArrayLike, size: int = PATCH_SIZE, spacing: float = PATCH_SPACING_MM) -> sitk.Image:
    """Return an empty float32 grid of ``size``³ voxels at ``spacing`` mm, LPS-aligned.

    The voxel of index ``size // 2`` along each axis sits exactly on ``point_lps``.
    """
    origin, spacings, direction = _patch_grid(_as_point(point_lps), size, spacing)
    reference = sitk.Image([int(size)] * 3, sitk.sitkFloat32)
    reference.SetSpacing(spacings)
    reference.SetDirection(direction)
    reference.SetOrigin(origin)
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
    origin, spacings, direction = _patch_grid(point, size, spacing)
    resampled = _resample_axis_aligned(image, np.array(origin), int(size), float(spacing))
    if resampled is None:
        array_hu, outside_fraction = _resample_with_itk(image, origin, spacings, direction, int(size))
    else:
        array_hu, (inside_z, inside_y, inside_x) = resampled
        inside = np.count_nonzero(inside_z) * np.count_nonzero(inside_y) * np.count_nonzero(inside_x)
        outside_fraction = 1.0 - inside / array_hu.size
    return Patch(array_hu=array_hu, outside_fraction=outside_fraction, point_lps=point, spacing_mm=float(spacing))


def _resample_with_itk(image: sitk.Image, origin: Tuple[float, ...], spacings: Tuple[float, ...],
                       direction: Tuple[float, ...], size: int) -> Tuple[np.ndarray, float]:
    """``sitk.Resample`` of the cube (float32 (z, y, x)), outside and non-finite voxels set to air; with the
    share of the cube outside the CT."""
    # Voxels outside the CT get a sentinel no CT can hold, so that they can be told apart afterwards.
    resampled = sitk.Resample(image, [size] * 3, sitk.Transform(), sitk.sitkLinear, origin, spacings,
                              direction, _OUTSIDE_SENTINEL, sitk.sitkFloat32)
    array_hu = sitk.GetArrayFromImage(resampled)
    outside = array_hu == np.float32(_OUTSIDE_SENTINEL)
    outside_fraction = float(np.count_nonzero(outside)) / outside.size
    if outside_fraction == 1.0:
        # The point is inside, so at least its own voxel must be: ITK could not invert the geometry.
        raise InputError(
            "The CT's direction matrix cannot be used (degenerate or not orthonormal); fix the image header."
        )
    not_finite = ~np.isfinite(array_hu)
    if outside_fraction > 0.0 or not_finite.any():
        array_hu[outside | not_finite] = AIR_HU
    return array_hu, outside_fraction


def _resample_axis_aligned(image: sitk.Image, origin_lps: np.ndarray, size: Union[int, Sequence[int]], spacing: float
                           ) -> Optional[Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """ITK's linear resampling of the LPS-aligned grid of ``size`` voxels (one for all axes, or x, y, z) and
    ``spacing`` from ``origin_lps``, done separably in numpy: the grid (float32 (z, y, x), voxels outside
    the CT set to air) and which of its planes lie inside the CT along z, y and x (a voxel is inside when
    it is on all three); or ``None`` when the CT's axes are not the grid's or the voxels it needs are not
    all finite (ITK then resamples). Its voxels are then all finite.

    Per axis: the continuous index of each cube voxel, inside when in [-0.5, n - 0.5) as ITK's
    ``IsInsideBuffer``; the lower neighbour ``floor`` clamped to the CT, the upper one clamped too (a
    neighbour beyond the face repeats the face, as ITK's interpolator does). Then ITK's order of
    operations, ``a + (b - a) * d`` in double along x, then y, then z.
    """
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    signs = np.diag(direction)
    if not (np.array_equal(np.abs(direction), np.eye(3)) and np.all(np.abs(signs) == 1.0)):
        return None
    voxels = sitk.GetArrayViewFromImage(image)  # (z, y, x)
    scale = signs / np.array(image.GetSpacing(), dtype=np.float64)
    size_x, size_y, size_z = sizes = [int(n) for n in np.broadcast_to(size, (3,))]
    ct_origin = np.array(image.GetOrigin(), dtype=np.float64)
    axes = [_axis_neighbours((origin_lps[axis] + spacing * np.arange(sizes[axis], dtype=np.float64) - ct_origin[axis]) * scale[axis],
                             image.GetSize()[axis]) for axis in range(3)]
    (x0, x1, dx, inside_x), (y0, y1, dy, inside_y), (z0, z1, dz, inside_z) = axes
    box = tuple(slice(int(low.min()), int(high.max()) + 1) for low, high in ((z0, z1), (y0, y1), (x0, x1)))
    block = voxels[box]
    if not np.issubdtype(block.dtype, np.integer) and not np.isfinite(block).all():
        return None  # ITK does not read a neighbour it weighs by zero; a NaN there must not spread
    x0, x1 = x0 - box[2].start, x1 - box[2].start
    y0, y1 = y0 - box[1].start, y1 - box[1].start
    z0, z1 = z0 - box[0].start, z1 - box[0].start
    # Slice by slice of the CT, then of the cube: small temporaries only (fresh large arrays cost more in
    # page faults than the arithmetic), and the double arithmetic cast once into the float32 cube.
    along_xy = np.empty((block.shape[0], size_y, size_x), dtype=np.float64)
    for k, ct_slice in enumerate(block):
        ct_slice = ct_slice.astype(np.float64)  # ITK reads each voxel as a double
        along_x = _lerp(ct_slice[:, x0], ct_slice[:, x1], dx)
        _lerp(along_x[y0], along_x[y1], dy[:, None], out=along_xy[k])
    cube = np.empty((size_z, size_y, size_x), dtype=np.float32)
    upper = np.empty((size_y, size_x), dtype=np.float64)
    for k in range(size_z):
        np.copyto(upper, along_xy[z1[k]])
        _lerp(along_xy[z0[k]], upper, dz[k], out=cube[k])
    # Outside the CT along any axis is outside: air, plane by plane (no mask of the whole cube).
    cube[~inside_z] = AIR_HU
    cube[:, ~inside_y] = AIR_HU
    cube[:, :, ~inside_x] = AIR_HU
    return cube, (inside_z, inside_y, inside_x)


def _axis_neighbours(index: np.ndarray, length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper neighbours, weight of the upper one and inside mask of continuous indices along one axis."""
    inside = (index >= -0.5) & (index < length - 0.5)
    lower = np.clip(np.floor(index), 0, length - 1).astype(np.intp)
    upper = np.minimum(lower + 1, length - 1)
    weight = np.maximum(index - lower, 0.0)  # below the first voxel ITK reads the face voxel alone
    return lower, upper, weight, inside


def _lerp(low: np.ndarray, high: np.ndarray, weight: Union[float, np.ndarray], out: Optional[np.ndarray] = None) -> np.ndarray:
    """``low + (high - low) * weight`` (ITK's expression) in double; ``high`` (a double array of its own)
    is overwritten, the result is written into ``out`` (cast once) or returned in ``high``."""
    np.subtract(high, low, out=high)
    np.multiply(high, weight, out=high)
    return np.add(high, low, out=high if out is None else out)


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
