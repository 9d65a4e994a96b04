"""A click on a vessel gives the vessel warning and no measurement; a nodule with vessels attached is still measured.

The finder's openings cut vessels into compact pieces; :mod:`notadiagnosis.blobness` tells such a
piece (a tube at its own scale) from a nodule (a blob at its own scale, vessels attached or not).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import physical_grid
from notadiagnosis.blobness import (CONTINUED_MARGIN, CONTINUES_AT, MIN_BLOBNESS_OFF, MIN_BLOBNESS_ON, VESSEL_WARNING,
                                    blobness, continuation, looks_like_vessel)
from notadiagnosis.centring import NOT_CENTRED_WARNING, centre_for_classification, from_measurements
from notadiagnosis.measure import measure_nodule
from test_nodule_measure import ANISOTROPIC, CENTRE, GRIDS, LUNG_HU, OBLIQUE, WALL_HU, _soft, make_lung_ct, sphere, tolerance

VESSEL_WARNING_START = VESSEL_WARNING.split("{")[0]


def with_curved_vessel(image: sitk.Image, radius_mm: float, bend_radius_mm: float = 15.0) -> sitk.Image:
    """The CT with a vessel added: a tube of soft tissue of ``radius_mm`` bending along an arc of
    ``bend_radius_mm`` (in the axial plane, through CENTRE) across the whole CT."""
    xyz = physical_grid(image) - CENTRE
    in_plane = np.linalg.norm(xyz[..., :2] - np.array([bend_radius_mm, 0.0]), axis=-1)
    across = np.sqrt((in_plane - bend_radius_mm) ** 2 + xyz[..., 2] ** 2)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    hu += _soft(across - radius_mm) * (WALL_HU - LUNG_HU)
    result = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
    result.CopyInformation(image)
    return result


# Vessels whose pieces the finder's shape tests alone took for nodules (measured before the blob test).
CURVED_VESSELS = {"anisotropic, 5 mm wide": (ANISOTROPIC, 2.5, (0.0, 0.0, 0.0)),
                  "oblique, 3 mm wide": (OBLIQUE, 1.5, (0.0, 0.0, 0.0)),
                  "oblique, 3 mm wide, 6 mm along": (OBLIQUE, 1.5, (0.0, 6.0, 0.0))}


@pytest.mark.parametrize("grid, radius_mm, offset", CURVED_VESSELS.values(), ids=CURVED_VESSELS.keys())
def test_a_click_on_a_vessel_gives_the_vessel_warning_and_no_measurement(grid, radius_mm, offset):
    image = with_curved_vessel(make_lung_ct(**grid), radius_mm)
    click = CENTRE + np.array(offset)
    before = sitk.GetArrayFromImage(image).copy()
    result = measure_nodule(image, click, model_card={})
    assert result.measurement is None and result.mask is None and result.segmentation is None
    assert len(result.warnings) == 1 and result.warnings[0].startswith(VESSEL_WARNING_START), result.warnings
    assert np.array_equal(sitk.GetArrayFromImage(image), before)
    # Classified, it is not presented as centred on a nodule: at the click, saying so.
    for centring in (centre_for_classification(image, click), from_measurements(image, [click], [result])[0]):
        assert not centring.centred and centring.shift_mm == 0.0
        assert centring.warnings == [NOT_CENTRED_WARNING.format(radius=10)]


JUXTAVASCULAR = {"8 mm, 4 mm vessel through it": (8.0, 2.0, False), "8 mm, 4 mm vessel on its side": (8.0, 2.0, True),
                 "12 mm, 5 mm vessel through it": (12.0, 2.5, False), "6 mm, 3 mm vessel through it": (6.0, 1.4, False)}


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
@pytest.mark.parametrize("diameter_mm, vessel_radius_mm, on_side", JUXTAVASCULAR.values(), ids=JUXTAVASCULAR.keys())
def test_a_nodule_with_a_vessel_attached_is_still_found_and_measured(grid, diameter_mm, vessel_radius_mm, on_side):
    through = (CENTRE, (0.3, 1.0, 0.2), vessel_radius_mm)
    beside = (CENTRE + np.array([0.0, 0.0, diameter_mm / 2.0]), (1.0, 0.3, 0.0), vessel_radius_mm)
    image = make_lung_ct(shapes=[sphere(diameter_mm)], vessel=beside if on_side else through, **grid)
    result = measure_nodule(image, CENTRE + 1.0, model_card={})
    m = result.measurement
    assert m is not None, result.warnings
    assert not any(w.startswith(VESSEL_WARNING_START) for w in result.warnings)
    assert np.linalg.norm(np.array(m.centre_lps) - CENTRE) < 1.0
    # The vessel's stubs may lengthen the long axis by up to a vessel's width, never more.
    assert diameter_mm - 2 * tolerance(image) <= m.long_axis_mm <= diameter_mm + 2 * vessel_radius_mm + tolerance(image)


def _shape_on_grid(semi_axes_mm, size: int = 41, spacing_mm: float = 1.0, wall_x_mm=None):
    """HU (z, y, x) of a lung with an ellipsoid of soft tissue (semi-axes x, y, z) at the cube's centre, its
    lung mask (the cube beyond ``wall_x_mm`` is chest wall, outside the lung), and the ellipsoid's mask."""
    z, y, x = (np.mgrid[:size, :size, :size] - size // 2) * spacing_mm
    q = np.sqrt((x / semi_axes_mm[0]) ** 2 + (y / semi_axes_mm[1]) ** 2 + (z / semi_axes_mm[2]) ** 2)
    shape = q <= 1.0
    hu = np.where(shape, WALL_HU, LUNG_HU)
    lung = np.ones(hu.shape, dtype=bool)
    if wall_x_mm is not None:
        lung = x < wall_x_mm
        hu = np.where(lung, hu, WALL_HU)
        shape &= lung
    return hu.astype(np.float32), lung, shape


def test_blobness_is_high_for_nodules_and_low_for_a_tube():
    sphere_hu, lung, sphere_mask = _shape_on_grid((4.0, 4.0, 4.0))
    assert blobness(sphere_hu, lung, sphere_mask, 1.0) > 0.9
    # The finder's most elongated nodule (principal-axis ratio 3) is still a blob at its scale.
    long_hu, lung, long_mask = _shape_on_grid((7.5, 2.5, 2.5))
    assert blobness(long_hu, lung, long_mask, 1.0) > MIN_BLOBNESS_OFF
    # A piece of a tube (the tube crosses the whole cube) is not, whatever the piece's shape.
    tube_hu, lung, _ = _shape_on_grid((1000.0, 2.5, 2.5))
    piece = _shape_on_grid((3.0, 2.5, 2.5))[2]
    assert blobness(tube_hu, lung, piece, 1.0) < 0.1
    # Against the chest wall (outside the lung): the wall is not taken for part of the nodule.
    wall_hu, wall_lung, half_sphere = _shape_on_grid((6.0, 6.0, 6.0), wall_x_mm=3.0)
    assert blobness(wall_hu, wall_lung, half_sphere, 1.0) > MIN_BLOBNESS_OFF


def test_blobness_does_not_modify_its_inputs():
    hu, lung, mask = _shape_on_grid((4.0, 3.0, 3.0), wall_x_mm=2.0)
    copies = [a.copy() for a in (hu, lung, mask)]
    blobness(hu, lung, mask, 1.0)
    assert all(np.array_equal(a, b) for a, b in zip((hu, lung, mask), copies))


def test_a_half_blob_is_refused_only_when_the_point_is_off_it():
    # A 5:1 cigar (blobness between the two thresholds): pointed at, it is taken; found 5 mm from the
    # point (the point on something else), it is not taken for the nodule meant.
    hu, lung, cigar = _shape_on_grid((12.5, 2.5, 2.5), size=61)
    assert MIN_BLOBNESS_ON < blobness(hu, lung, cigar, 1.0) < MIN_BLOBNESS_OFF
    assert looks_like_vessel(hu, lung, cigar, 1.0, point_gap_mm=0.0) is None
    warning = looks_like_vessel(hu, lung, cigar, 1.0, point_gap_mm=5.0)
    assert warning is not None and warning.startswith(VESSEL_WARNING_START) and "5.0 mm from the point" in warning
    # A piece of a tube is refused wherever the point is.
    tube_hu, lung, _ = _shape_on_grid((1000.0, 2.5, 2.5))
    piece = _shape_on_grid((3.0, 2.5, 2.5))[2]
    assert "at the point" in looks_like_vessel(tube_hu, lung, piece, 1.0, point_gap_mm=0.0)


def _bead_on_a_tube(bulge_semi_axes_mm, tube_radius_mm: float, size: int = 61):
    """HU (z, y, x, 1 mm grid) of a tube along x through the cube with an ellipsoidal bulge at the centre
    (semi-axes x, y, z; a knot on a vessel, a nodule on a vessel), the lung mask and the bulge's mask."""
    z, y, x = np.mgrid[:size, :size, :size] - size // 2
    a, b, c = bulge_semi_axes_mm
    bulge = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1.0
    tube = y ** 2 + z ** 2 <= tube_radius_mm ** 2
    hu = np.where(bulge | tube, WALL_HU, LUNG_HU).astype(np.float32)
    return hu, np.ones(hu.shape, dtype=bool), bulge


def test_continuation_is_high_for_a_piece_of_a_tube_and_low_for_a_lone_nodule():
    tube_hu, lung, _ = _shape_on_grid((1000.0, 2.5, 2.5), size=61)
    piece = _shape_on_grid((3.0, 2.5, 2.5), size=61)[2]
    assert continuation(tube_hu, lung, piece, 1.0) > 0.9
    for semi_axes in ((4.0, 4.0, 4.0), (12.5, 2.5, 2.5)):  # a sphere, a 5:1 cigar: beyond their ends is lung
        hu, lung, shape = _shape_on_grid(semi_axes, size=61)
        assert continuation(hu, lung, shape, 1.0) < 0.1


def test_a_knot_on_a_vessel_is_refused_but_a_nodule_on_a_vessel_is_taken():
    # Both go on along their axis (the vessel does); the knot is only half a blob, the nodule a clear one.
    knot_hu, lung, knot = _bead_on_a_tube((4.0, 2.8, 2.8), 2.2)
    assert continuation(knot_hu, lung, knot, 1.0) >= CONTINUES_AT
    assert MIN_BLOBNESS_ON <= blobness(knot_hu, lung, knot, 1.0) < MIN_BLOBNESS_ON + CONTINUED_MARGIN
    warning = looks_like_vessel(knot_hu, lung, knot, 1.0, point_gap_mm=0.0)
    assert warning is not None and warning.startswith(VESSEL_WARNING_START) and "goes on beyond both its ends" in warning
    nodule_hu, lung, nodule = _bead_on_a_tube((4.0, 4.0, 4.0), 2.0)  # the 8 mm nodule with a 4 mm vessel of the tests above
    assert continuation(nodule_hu, lung, nodule, 1.0) >= CONTINUES_AT
    assert looks_like_vessel(nodule_hu, lung, nodule, 1.0, point_gap_mm=0.0) is None


def test_a_bulge_on_a_vessel_is_taken_when_pointed_at_and_refused_when_found_off_the_point():
    # A 7 mm bulge on a 4 mm vessel: a clear enough blob when the user points at it; reached from a point
    # 5 mm away (most often on the vessel itself), it goes on as the vessel does and is not taken.
    hu, lung, bulge = _bead_on_a_tube((3.5, 3.5, 3.5), 2.0)
    assert continuation(hu, lung, bulge, 1.0) >= CONTINUES_AT
    assert MIN_BLOBNESS_OFF <= blobness(hu, lung, bulge, 1.0) < MIN_BLOBNESS_OFF + CONTINUED_MARGIN
    assert looks_like_vessel(hu, lung, bulge, 1.0, point_gap_mm=0.0) is None
    warning = looks_like_vessel(hu, lung, bulge, 1.0, point_gap_mm=5.0)
    assert warning is not None and "5.0 mm from the point goes on beyond both its ends" in warning
