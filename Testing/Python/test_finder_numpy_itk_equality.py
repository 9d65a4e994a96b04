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
def test_signed_distance_is_itks_within_its_reach_and_infinite_or_itks_beyond(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(8, 40, 3))
    mask = _blobs(rng, shape)
    reference = _grid(shape, float(rng.choice(SPACINGS_MM)))
    itk = _itk_signed_distance(mask, reference)
    np.testing.assert_allclose(finder._signed_distance(mask, reference), itk, atol=1e-4)
    for reach_mm in (1.5, 4.0):
        bounded = finder._signed_distance(mask, reference, reach_mm)
        within = np.abs(itk) <= reach_mm - 1e-4
        np.testing.assert_allclose(bounded[within], itk[within], atol=1e-4)
        beyond = np.abs(itk) > reach_mm + 1e-4  # farther: ITK's value or infinity, on the same side
        assert np.array_equal(np.sign(bounded[beyond]), np.sign(itk[beyond]))
        assert np.all(np.isinf(bounded[beyond]) | np.isclose(bounded[beyond], itk[beyond], atol=1e-4))


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


def test_a_deep_mask_beyond_the_numpy_reach_falls_back_to_itk_exactly():
    shape = (60, 60, 60)
    z, y, x = np.ogrid[:60, :60, :60]
    ball = (z - 30) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 27 ** 2  # deeper than DISTANCE_REACH_VOXELS
    reference = _grid(shape, 1.0)
    itk = _itk_signed_distance(ball, reference)
    assert np.array_equal(finder._signed_distance(ball, reference), itk)
    bounded = finder._signed_distance(ball, reference, 4.0)  # the same ball, looked at only 4 mm deep
    assert np.isinf(bounded[30, 30, 30]) and bounded[30, 30, 30] > 0 and np.isinf(bounded[0, 0, 0]) and bounded[0, 0, 0] < 0


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
