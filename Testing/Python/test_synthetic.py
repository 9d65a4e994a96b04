"""The synthetic chest CT: LPS geometry, HU ranges of its tissues, and four distinct nodule kinds."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from notadiagnosis import extract_patch
from notadiagnosis.synthetic import NODULE_KINDS, make_synthetic_chest_ct


@pytest.fixture(scope="module")
def phantom():
    return make_synthetic_chest_ct(seed=0)


def median_hu_around(image: sitk.Image, point_lps, radius_mm: float) -> float:
    """Median HU within ``radius_mm`` of a point, on the 1 mm patch grid (robust to the noise)."""
    patch = extract_patch(image, point_lps)
    offsets = np.arange(64) - 32
    zz, yy, xx = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    return float(np.median(patch.array_hu[np.sqrt(zz ** 2 + yy ** 2 + xx ** 2) <= radius_mm]))


def shell_dense_fraction(image: sitk.Image, nodule) -> float:
    """Share of the shell 1.5-6 mm outside a nodule's nominal sphere that is denser than -300 HU."""
    patch = extract_patch(image, nodule["center_lps"])
    offsets = np.arange(64) - 32
    zz, yy, xx = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    radius = nodule["diameter_mm"] / 2
    return float((patch.array_hu[(r > radius + 1.5) & (r < radius + 6)] > -300).mean())


def test_volume_is_an_int16_ct_with_lps_geometry_and_the_given_spacing(phantom):
    image, _ = phantom
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 2.0))
    extent_mm = np.array(image.GetSize()) * np.array(image.GetSpacing())
    assert np.all(extent_mm > [300, 240, 160])  # a whole chest fits
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    np.testing.assert_allclose(centre, (0, 0, 0), atol=1.0)


def test_spacing_changes_the_voxels_not_the_anatomy():
    image, nodules = make_synthetic_chest_ct(seed=0, spacing=(1.5, 1.5, 3.0))
    np.testing.assert_allclose(image.GetSpacing(), (1.5, 1.5, 3.0))
    reference, reference_nodules = make_synthetic_chest_ct(seed=0)
    assert nodules == reference_nodules
    extent = np.array(image.GetSize()) * image.GetSpacing()
    reference_extent = np.array(reference.GetSize()) * reference.GetSpacing()
    np.testing.assert_allclose(extent, reference_extent, atol=3.0)


def test_tissues_have_their_hounsfield_units(phantom):
    image, _ = phantom
    assert median_hu_around(image, (150.0, 120.0, 0.0), 3) < -950  # air outside the body (corner)
    assert -900 < median_hu_around(image, (70.0, 50.0, 5.0), 3) < -800  # aerated left lung
    assert -900 < median_hu_around(image, (-70.0, 50.0, 5.0), 3) < -800  # aerated right lung
    assert 0 < median_hu_around(image, (0.0, -60.0, 0.0), 3) < 80  # soft tissue in front of the heart
    assert -150 < median_hu_around(image, (0.0, -98.0, 0.0), 1.5) < -50  # subcutaneous fat, anterior
    assert median_hu_around(image, (0.0, 90.0, 0.0), 4) > 500  # vertebra
    assert median_hu_around(image, (0.0, -10.0, 70.0), 4) < -950  # trachea


def test_four_nodules_of_the_four_kinds_lie_in_the_lungs(phantom):
    image, nodules = phantom
    assert [n["kind"] for n in nodules] == list(NODULE_KINDS)
    assert len({n["name"] for n in nodules}) == 4
    for nodule in nodules:
        assert set(nodule) == {"name", "center_lps", "diameter_mm", "kind"}
        assert len(nodule["center_lps"]) == 3
        patch = extract_patch(image, nodule["center_lps"])
        assert patch.outside_fraction == 0.0  # the whole 64 mm cube is inside the CT
        # Just beyond the nodule (and its spiculae) lies lung.
        radius = nodule["diameter_mm"] / 2
        beyond = np.asarray(nodule["center_lps"]) + [0.0, 0.0, radius * 2.5 + 4.0]
        assert median_hu_around(image, beyond, 1.5) < -700


@pytest.mark.parametrize("kind, low_hu, high_hu", [
    ("solid-small-smooth", -50, 100),
    ("solid-large-spiculated", -50, 100),
    ("ground-glass", -700, -400),
    ("calcified", 400, 900),
])
def test_each_nodule_kind_has_its_density(phantom, kind, low_hu, high_hu):
    image, nodules = phantom
    nodule = next(n for n in nodules if n["kind"] == kind)
    core_radius = max(nodule["diameter_mm"] / 4, 1.5)
    assert low_hu < median_hu_around(image, nodule["center_lps"], core_radius) < high_hu


def test_kinds_differ_in_size_and_only_the_spiculated_one_reaches_out(phantom):
    image, nodules = phantom
    by_kind = {n["kind"]: n for n in nodules}
    assert by_kind["solid-large-spiculated"]["diameter_mm"] >= 2 * by_kind["solid-small-smooth"]["diameter_mm"]
    shells = {kind: shell_dense_fraction(image, nodule) for kind, nodule in by_kind.items()}
    assert shells["solid-large-spiculated"] > 0.005, shells
    for kind in ("solid-small-smooth", "ground-glass", "calcified"):
        assert shells[kind] < 0.002, shells


def test_same_seed_gives_the_same_volume_and_another_seed_another(phantom):
    image, nodules = phantom
    again, again_nodules = make_synthetic_chest_ct(seed=0)
    other, other_nodules = make_synthetic_chest_ct(seed=1)
    array = sitk.GetArrayViewFromImage(image)
    np.testing.assert_array_equal(array, sitk.GetArrayViewFromImage(again))
    assert again_nodules == nodules == other_nodules  # the layout is fixed; vessels and noise vary
    assert np.mean(array != sitk.GetArrayViewFromImage(other)) > 0.5


def test_invalid_spacing_is_a_programming_error():
    with pytest.raises(ValueError):
        make_synthetic_chest_ct(spacing=(0.8, 0.0, 2.0))
