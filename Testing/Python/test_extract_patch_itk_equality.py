"""The separable numpy resampling used for axis-aligned CTs gives ITK's linear resampling, voxel for voxel.

``extract_patch`` resamples CTs whose axes are the patch's (direction diagonal ±1) in numpy and every
other CT with ``sitk.Resample``; training and inference both go through it, so the two paths must
agree to float32 rounding, with the same voxels outside, on any spacing, origin, mirrored axis and
point, the CT's faces included.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notadiagnosis import extract_patch, geometry
from notadiagnosis.geometry import AIR_HU, patch_reference

SENTINEL = np.float32(geometry._OUTSIDE_SENTINEL)
PIXEL_TYPES = (np.int16, np.uint8, np.int32, np.float32, np.float64)


def itk_cube(image: sitk.Image, point_lps, size: int, spacing: float) -> np.ndarray:
    """What ITK alone gives: the cube, outside voxels at the sentinel."""
    reference = patch_reference(point_lps, size, spacing)
    return sitk.GetArrayFromImage(
        sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float(SENTINEL), sitk.sitkFloat32)
    )


def axis_aligned_ct(shape_xyz, spacing, origin, signs, dtype, seed) -> sitk.Image:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (max(info.min, -1024), min(info.max, 3000)) if info else (-1024, 3000)
    array = rng.uniform(low, high, size=tuple(reversed(shape_xyz))).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.diag(signs).ravel().tolist())
    return image


def assert_same_as_itk(image: sitk.Image, point_lps, size: int, spacing: float) -> None:
    """The numpy path reads the same voxels as inside the CT as ITK does, gives ITK's values there and air
    elsewhere."""
    origin = np.array(geometry._patch_grid(np.asarray(point_lps, dtype=np.float64), size, spacing)[0])
    resampled = geometry._resample_axis_aligned(image, origin, size, spacing)
    assert resampled is not None, "an axis-aligned CT must take the numpy path"
    fast, (inside_z, inside_y, inside_x) = resampled
    expected = itk_cube(image, point_lps, size, spacing)
    inside = expected != SENTINEL
    fast_inside = inside_z[:, None, None] & inside_y[None, :, None] & inside_x[None, None, :]
    # A plane of the cube exactly on the CT's outer face (half a voxel beyond the last centre) is inside or
    # not by the last bit of its continuous index, which ITK accumulates along a row: either answer is ITK's.
    on_face = on_a_face(image, origin, size, spacing)
    np.testing.assert_array_equal(fast_inside[~on_face], inside[~on_face])
    both = inside & fast_inside
    # ITK's arithmetic in ITK's order: equal up to the last bit of float32 (a few voxels differ by one ulp,
    # from how ITK accumulates the continuous index along a row).
    np.testing.assert_allclose(fast[both], expected[both], rtol=2.0**-22, atol=1e-5)
    assert np.all(fast[~fast_inside] == AIR_HU)


def on_a_face(image: sitk.Image, origin_lps: np.ndarray, size: int, spacing: float) -> np.ndarray:
    """(z, y, x) mask of the cube's voxels whose continuous index along some axis is within 1e-9 voxel of
    the CT's outer face (-0.5 or n - 0.5)."""
    cube_mm = origin_lps[:, None] + spacing * np.arange(size)[None, :]
    signs = np.diag(np.reshape(image.GetDirection(), (3, 3)))
    index = (cube_mm - np.array(image.GetOrigin())[:, None]) * (signs / np.array(image.GetSpacing()))[:, None]
    faces = [(np.abs(index[axis] + 0.5) < 1e-9) | (np.abs(index[axis] - (image.GetSize()[axis] - 0.5)) < 1e-9)
             for axis in range(3)]
    return faces[2][:, None, None] | faces[1][None, :, None] | faces[0][None, None, :]


coordinates = st.floats(min_value=-400.0, max_value=400.0, allow_nan=False)
spacings = st.floats(min_value=0.3, max_value=5.0, allow_nan=False)
lengths = st.integers(min_value=1, max_value=70)
fractions = st.floats(min_value=-0.5, max_value=1.0, allow_nan=False, exclude_max=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(lengths, lengths, lengths),
    spacing=st.tuples(spacings, spacings, spacings),
    origin=st.tuples(coordinates, coordinates, coordinates),
    signs=st.tuples(*(st.sampled_from([1.0, -1.0]),) * 3),
    dtype=st.sampled_from(PIXEL_TYPES),
    where=st.tuples(fractions, fractions, fractions),
    on_voxel=st.booleans(),
    grid=st.sampled_from([(64, 1.0), (32, 0.7), (17, 2.5)]),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_numpy_path_equals_itk_on_any_axis_aligned_ct(shape, spacing, origin, signs, dtype, where, on_voxel, grid, seed):
    image = axis_aligned_ct(shape, spacing, origin, signs, dtype, seed)
    # Anywhere in the CT, down to half a voxel beyond the outer voxel centres (ITK's inside), or exactly on a voxel.
    index = [w * n for w, n in zip(where, shape)]
    if on_voxel:
        index = [float(np.clip(round(i), 0, n - 1)) for i, n in zip(index, shape)]
    point = image.TransformContinuousIndexToPhysicalPoint(index)
    assert_same_as_itk(image, point, *grid)


def test_extract_patch_on_an_axis_aligned_ct_equals_itk_and_fills_outside_with_air():
    image = axis_aligned_ct((40, 50, 12), (0.7, 0.7, 2.5), (-20.0, 30.0, -100.0), (1.0, 1.0, -1.0), np.int16, 3)
    corner = image.TransformIndexToPhysicalPoint((1, 2, 3))
    patch = extract_patch(image, corner)
    expected = itk_cube(image, corner, 64, 1.0)
    outside = expected == SENTINEL
    assert 0.0 < patch.outside_fraction == pytest.approx(outside.mean())
    assert np.all(patch.array_hu[outside] == AIR_HU)
    np.testing.assert_allclose(patch.array_hu[~outside], expected[~outside], rtol=2.0**-22, atol=1e-5)
    # The patch image is built on demand with the patch's own geometry.
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(patch.image), patch.array_hu)
    assert np.allclose(patch.image.TransformIndexToPhysicalPoint((32, 32, 32)), corner)


def test_oblique_and_permuted_cts_go_to_itk():
    image = axis_aligned_ct((20, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.int16, 0)
    origin = np.zeros(3)
    image.SetDirection([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # axes swapped
    assert geometry._resample_axis_aligned(image, origin, 8, 1.0) is None
    angle = np.deg2rad(10.0)
    image.SetDirection([np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0])
    assert geometry._resample_axis_aligned(image, origin, 8, 1.0) is None


def test_a_float_ct_with_nan_near_the_point_goes_to_itk_and_reads_nan_as_air():
    array = np.full((20, 20, 20), 40.0, dtype=np.float32)
    array[10, 10, 11] = np.nan
    image = sitk.GetImageFromArray(array)
    point = image.TransformIndexToPhysicalPoint((10, 10, 10))
    origin = np.array(geometry._patch_grid(np.asarray(point), 8, 1.0)[0])
    assert geometry._resample_axis_aligned(image, origin, 8, 1.0) is None
    patch = extract_patch(image, point, size=8)
    assert np.all(np.isfinite(patch.array_hu))
    assert patch.array_hu[4, 4, 4] == 40.0  # ITK does not read the NaN it weighs by zero
    assert patch.array_hu[4, 4, 5] == AIR_HU
