"""Physical-space patch extraction and RAS/LPS conversions."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import add_sphere, bright_centroid_zyx, make_ct, rotation_matrix
from notadiagnosis import PointOutsideImageError, extract_patch, lps_to_ras, patch_reference, ras_to_lps
from notadiagnosis.errors import InputError

CENTRE = 32  # index of the patch voxel that sits on the point


def oblique_ct_with_marker(marker_lps):
    direction = rotation_matrix([0.3, -0.5, 1.0], 27.0)
    ct = make_ct(size=(140, 120, 60), spacing=(0.7, 0.9, 2.0), direction=direction, origin=(-20.0, -45.0, -60.0))
    return add_sphere(ct, marker_lps, radius_mm=3.0, value_hu=1000.0)


def voxel_centre_lps(ct, index):
    return np.array(ct.TransformIndexToPhysicalPoint([int(v) for v in index]))


def test_marker_in_oblique_anisotropic_ct_lands_on_centre_voxel():
    ct = oblique_ct_with_marker([0.0, 0.0, 0.0])
    marker = voxel_centre_lps(ct, (70, 60, 30))
    ct = oblique_ct_with_marker(marker)
    patch = extract_patch(ct, marker)
    assert patch.array_hu.shape == (64, 64, 64) and patch.array_hu.dtype == np.float32
    centroid = bright_centroid_zyx(patch.array_hu, 300.0)
    assert np.linalg.norm(centroid - CENTRE) <= 1.0  # 1 voxel = 1 mm


def test_patch_axes_follow_lps_whatever_the_ct_direction():
    ct = oblique_ct_with_marker([0.0, 0.0, 0.0])
    marker = voxel_centre_lps(ct, (70, 60, 30))
    ct = oblique_ct_with_marker(marker)
    # Centre the patch 6 mm to the patient's left (+x), 4 mm posterior (+y), 8 mm superior (+z) of the
    # marker: the marker must then appear 6 voxels lower in x, 4 in y and 8 in z.
    patch = extract_patch(ct, marker + np.array([6.0, 4.0, 8.0]))
    centroid = bright_centroid_zyx(patch.array_hu, 300.0)
    assert np.allclose(centroid, [CENTRE - 8, CENTRE - 4, CENTRE - 6], atol=1.0)
    assert np.allclose(patch.image.GetDirection(), np.eye(3).ravel())
    assert np.allclose(patch.image.GetSpacing(), 1.0)
    origin = np.array(patch.image.GetOrigin())
    assert np.allclose(origin + CENTRE, marker + [6.0, 4.0, 8.0])


def test_patch_image_carries_the_same_voxels_as_the_array():
    ct = oblique_ct_with_marker(voxel_centre_lps(make_ct(), (60, 50, 20)))
    patch = extract_patch(ct, ct.TransformIndexToPhysicalPoint((60, 50, 20)))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(patch.image), patch.array_hu)


def test_point_near_the_edge_pads_with_air():
    ct = make_ct(size=(100, 100, 40), spacing=(1.0, 1.0, 2.5), origin=(0.0, 0.0, 0.0), background_hu=40.0)
    near_corner = [3.0, 50.0, 40.0]  # 3 mm from the image's x = 0 face
    patch = extract_patch(ct, near_corner)
    assert np.all(patch.array_hu[:, :, :26] == -1000.0)  # x < -0.5 mm is outside: air
    assert np.all(patch.array_hu[:, :, 30:] == 40.0)
    assert patch.outside_fraction == pytest.approx(29 / 64, abs=1 / 64)


def test_point_inside_has_no_outside_fraction():
    ct = make_ct(size=(200, 200, 60), spacing=(0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0), background_hu=40.0)
    patch = extract_patch(ct, [80.0, 80.0, 60.0])
    assert patch.outside_fraction == 0.0
    assert np.all(patch.array_hu == 40.0)


def test_point_outside_ct_is_refused():
    ct = make_ct(origin=(0.0, 0.0, 0.0))
    with pytest.raises(PointOutsideImageError, match="outside the CT"):
        extract_patch(ct, [-50.0, 10.0, 10.0])


def test_extraction_leaves_the_ct_unchanged():
    ct = oblique_ct_with_marker([10.0, 5.0, 0.0])
    before = sitk.GetArrayFromImage(ct).copy()
    geometry = (ct.GetOrigin(), ct.GetSpacing(), ct.GetDirection())
    extract_patch(ct, [10.0, 5.0, 0.0])
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), before)
    assert (ct.GetOrigin(), ct.GetSpacing(), ct.GetDirection()) == geometry


def test_bad_points_and_images_are_refused_with_input_errors():
    ct = make_ct()
    with pytest.raises(InputError):
        extract_patch(ct, [1.0, 2.0])
    with pytest.raises(InputError):
        extract_patch(ct, [np.nan, 0.0, 0.0])
    with pytest.raises(InputError):
        extract_patch(sitk.Image([10, 10], sitk.sitkInt16), [0.0, 0.0, 0.0])


def test_ras_lps_round_trip_and_sign():
    points = np.array([[1.5, -2.0, 3.0], [-10.0, 20.0, -30.0]])
    assert np.allclose(ras_to_lps(points), [[-1.5, 2.0, 3.0], [10.0, -20.0, -30.0]])
    assert np.allclose(lps_to_ras(ras_to_lps(points)), points)
    assert np.allclose(ras_to_lps([1.0, 2.0, 3.0]), [-1.0, -2.0, 3.0])
    original = points.copy()
    ras_to_lps(points)
    np.testing.assert_array_equal(points, original)  # inputs are not modified


def test_patch_reference_puts_the_point_on_the_centre_voxel():
    reference = patch_reference([10.0, -4.0, 7.5], size=64, spacing=1.0)
    assert reference.GetSize() == (64, 64, 64)
    assert np.allclose(reference.TransformIndexToPhysicalPoint((32, 32, 32)), [10.0, -4.0, 7.5])


def test_degenerate_direction_is_refused_with_a_clear_error():
    ct = make_ct(size=(20, 20, 20), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    ct.SetDirection([1.0, 0.0, 0.0, 0.0, 1.0, 2.2e-308, 0.0, -2.2e-308, 1.0])
    try:
        patch = extract_patch(ct, [10.0, 10.0, 10.0])
    except InputError as error:
        assert "direction matrix" in str(error)
    else:  # an ITK build that copes with denormals must give a usable patch
        assert patch.outside_fraction < 1.0
