"""The finder's numpy kernels give what the SimpleITK filters they replace give.

The nodule finder computes its distance maps, smoothing, 2D hole filling and mask resampling in numpy
(several times faster on its small grids); each must agree with the ITK filter it stands for, on
random blob-shaped masks and noisy images of the grid sizes and spacings the finder uses.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from notadiagnosis import finder

SPACINGS_MM = (0.5, 0.55, 0.7, 1.0, 2.0)


def _grid(shape, spacing_mm: float, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    reference = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkUInt8)
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetOrigin(origin)
    return reference


def _blobs(rng: np.random.Generator, shape) -> np.ndarray:
    """A random mask of smooth blobs (as thresholded CT looks), neither empty nor full."""
    noise = sitk.GetImageFromArray(rng.random(shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, float(rng.uniform(0.8, 3.0))))
    return smooth > np.percentile(smooth, rng.uniform(30.0, 85.0))


def _itk_signed_distance(mask: np.ndarray, reference: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=True, squaredDistance=False,
                                                               useImageSpacing=True))


@pytest.mark.parametrize("seed", range(12))
def test_one_sided_distances_are_itks_within_their_reach_and_infinite_or_itks_beyond(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(8, 40, 3))
    mask = _blobs(rng, shape)
    reference = _grid(shape, float(rng.choice(SPACINGS_MM)))
    itk = _itk_signed_distance(mask, reference)
    expected = {"inside": np.where(mask, itk, 0.0), "outside": np.where(mask, 0.0, -itk)}
    for side, distance in (("inside", finder._inside_distance), ("outside", finder._outside_distance)):
        np.testing.assert_allclose(distance(mask, reference), expected[side], atol=1e-4)
        for reach_mm in (1.5, 4.0):
            bounded = distance(mask, reference, reach_mm)
            within = expected[side] <= reach_mm - 1e-4
            np.testing.assert_allclose(bounded[within], expected[side][within], atol=1e-4)
            beyond = expected[side] > reach_mm + 1e-4  # farther: ITK's value or infinity
            assert np.all(np.isinf(bounded[beyond]) | np.isclose(bounded[beyond], expected[side][beyond], atol=1e-4))


def test_one_sided_distances_without_a_boundary_are_infinite_on_their_side_and_zero_elsewhere():
    reference = _grid((6, 7, 8), 1.0)
    empty, full = np.zeros((6, 7, 8), bool), np.ones((6, 7, 8), bool)
    assert np.all(np.isinf(finder._outside_distance(empty, reference))) and not finder._inside_distance(empty, reference).any()
    assert np.all(np.isinf(finder._inside_distance(full, reference))) and not finder._outside_distance(full, reference).any()


@pytest.mark.parametrize("seed", range(6))
def test_depth_is_itks_distance_plus_one_voxel_inside_and_zero_outside(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.integers(10, 36, 3))
    mask = _blobs(rng, shape)
    spacing = float(rng.choice(SPACINGS_MM))
    reference = _grid(shape, spacing)
    expected = np.where(mask, np.maximum(_itk_signed_distance(mask, reference), 0.0) + spacing, 0.0)
    np.testing.assert_allclose(finder._distance_inside(mask, reference), expected, atol=1e-4)
    bounded = finder._distance_inside(mask, reference, 2.0)
    shallow = expected <= 2.0
    np.testing.assert_allclose(bounded[shallow], expected[shallow], atol=1e-4)
    assert np.all(bounded[expected > 2.0 + spacing + 1e-4] > 2.0)


@pytest.mark.parametrize("semi_axes", [(15, 15, 15), (18, 9, 13)])
def test_a_deep_mask_within_the_numpy_reach_is_itks_everywhere_inside(semi_axes):
    # Deep enough that the nearest contour voxel of many voxels lies many rows away (the reach the
    # numpy map keeps must not cut it short).
    z, y, x = np.ogrid[:44, :44, :44]
    ellipsoid = ((z - 22) / semi_axes[0]) ** 2 + ((y - 21) / semi_axes[1]) ** 2 + ((x - 22.5) / semi_axes[2]) ** 2 <= 1.0
    reference = _grid((44, 44, 44), 0.7)
    itk = _itk_signed_distance(ellipsoid, reference)
    np.testing.assert_allclose(finder._inside_distance(ellipsoid, reference), np.where(ellipsoid, itk, 0.0), atol=1e-4)


def test_a_deep_mask_beyond_the_numpy_reach_falls_back_to_itk_exactly():
    shape = (60, 60, 60)
    z, y, x = np.ogrid[:60, :60, :60]
    ball = (z - 30) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 27 ** 2  # deeper than DISTANCE_REACH_VOXELS
    reference = _grid(shape, 1.0)
    itk = _itk_signed_distance(ball, reference)
    assert np.array_equal(finder._inside_distance(ball, reference), np.where(ball, itk, 0.0))
    speck = (z - 5) ** 2 + (y - 5) ** 2 + (x - 5) ** 2 <= 9  # the far corner lies beyond the reach outside
    assert np.array_equal(finder._outside_distance(speck, reference), np.where(speck, 0.0, -_itk_signed_distance(speck, reference)))
    bounded = finder._inside_distance(ball, reference, 4.0)  # the same ball, looked at only 4 mm deep
    assert np.isinf(bounded[30, 30, 30]) and bounded[0, 0, 0] == 0.0
    assert np.isinf(finder._outside_distance(ball, reference, 4.0)[0, 0, 0])


@pytest.mark.parametrize("spacing_mm", SPACINGS_MM)
def test_smoothing_is_itks_recursive_gaussian(spacing_mm):
    rng = np.random.default_rng(7)
    hu = rng.normal(-600.0, 300.0, (24, 26, 28)).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing([spacing_mm] * 3)
    itk = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, finder.SMOOTHING_SIGMA_MM))
    ours = finder._gaussian(hu, spacing_mm)
    # Inside: the same filter (to a fraction of a HU on a 300 HU noise); at the faces the edge is extended
    # where ITK's recursion starts from its own boundary values: a few HU.
    inner = (slice(4, -4),) * 3
    assert np.max(np.abs(ours[inner] - itk[inner])) < 1.0
    assert np.max(np.abs(ours - itk)) < 30.0
    assert abs(float(ours.mean()) - float(itk.mean())) < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_slice_hole_filling_is_itks_binary_fillhole_on_every_slice(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 30, 40)) > rng.uniform(0.3, 0.7)
    expected = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(plane.astype(np.uint8)))) > 0
                         for plane in mask])
    assert np.array_equal(finder._fill_holes_per_slice(mask), expected)


@pytest.mark.parametrize("seed", range(6))
def test_mask_resampling_is_itks_linear_resampling_at_one_half(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(10, 30, 3))
    mask = _blobs(rng, shape)
    source = _grid(shape, float(rng.choice((1.0, 2.0))), tuple(rng.uniform(-50.0, 50.0, 3)))
    spacing = float(rng.choice(SPACINGS_MM))
    # A target grid overlapping the source's and reaching beyond its faces.
    size = (np.array(shape[::-1]) * source.GetSpacing()[0] / spacing).astype(int) + 6
    target = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    target.SetSpacing([spacing] * 3)
    target.SetOrigin((np.array(source.GetOrigin()) - 3.1 * spacing + rng.uniform(0.0, 1.0, 3)).tolist())
    image = sitk.GetImageFromArray(mask.astype(np.float32))
    image.CopyInformation(source)
    itk = sitk.GetArrayFromImage(sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ours = finder._resample_mask(mask, source, target)
    decided = np.abs(itk - 0.5) > 1e-5  # exactly one half: float rounding decides, either way is right
    assert np.array_equal(ours[decided], itk[decided] >= 0.5)
    assert ours.any() and not ours.all()


@pytest.mark.parametrize("seed", range(4))
def test_sampling_an_axis_aligned_ct_is_itks_linear_resampling(seed):
    # The finder's grids (a box around the point, its own size along each axis) reach beyond the CT's faces.
    rng = np.random.default_rng(seed)
    array = rng.integers(-1024, 400, (18, 40, 36)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.75, 2.5))
    image.SetOrigin(tuple(rng.uniform(-30.0, 30.0, 3)))
    image.SetDirection(np.diag([1.0, 1.0, float(rng.choice([1.0, -1.0]))]).ravel().tolist())
    point = np.array(image.TransformContinuousIndexToPhysicalPoint(rng.uniform(-0.4, 3.0, 3).tolist()))  # near a corner
    half_mm = rng.uniform(4.0, 16.0, 3)
    spacing = float(rng.choice((0.55, 1.0, 2.0)))
    stage = finder._sample(image, point, half_mm, spacing)
    assert len(set(stage.hu.shape)) > 1
    itk = sitk.GetArrayFromImage(finder._resample(image, stage.reference, finder._OUTSIDE_HU))
    inside = itk > finder._OUTSIDE_HU / 2
    assert np.array_equal(stage.inside_ct, inside) and not inside.all()
    np.testing.assert_allclose(stage.hu[inside], itk[inside], rtol=2.0**-22, atol=1e-5)
    assert np.all(stage.hu[~inside] == -1000.0)


@pytest.mark.parametrize("seed", range(4))
def test_label_map_on_an_axis_aligned_ct_grid_is_itks_linear_resampling_of_each_label(seed):
    rng = np.random.default_rng(200 + seed)
    shape = tuple(int(n) for n in rng.integers(12, 30, 3))
    nodule = _blobs(rng, shape)
    labels = np.where(nodule, finder.LABEL_NON_SOLID, 0).astype(np.uint8)
    labels[nodule & _blobs(rng, shape)] = finder.LABEL_SOLID
    fine = sitk.GetImageFromArray(labels)
    fine.CopyInformation(_grid(shape, float(rng.choice((0.55, 0.7))), tuple(rng.uniform(-20.0, 20.0, 3))))
    ct = sitk.Image([80, 80, 40], sitk.sitkInt16)  # anisotropic, on its own lattice
    ct.SetSpacing((0.703125, 0.75, 2.5))
    ct.SetOrigin(tuple(np.array(fine.GetOrigin()) - rng.uniform(10.0, 20.0, 3)))
    result = finder._on_ct_grid(fine, ct)
    ours = sitk.GetArrayFromImage(result)
    for label, mask in ((finder.LABEL_NON_SOLID, labels > 0), (finder.LABEL_SOLID, labels == finder.LABEL_SOLID)):
        image = sitk.GetImageFromArray(mask.astype(np.float32))
        image.CopyInformation(fine)
        itk = sitk.GetArrayFromImage(sitk.Resample(image, result, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        decided = np.abs(itk - 0.5) > 1e-5  # exactly one half: float rounding decides, either way is right
        expected = itk >= 0.5
        got = ours >= label if label == finder.LABEL_NON_SOLID else ours == label
        assert np.array_equal(got[decided], expected[decided]) and expected.any()
