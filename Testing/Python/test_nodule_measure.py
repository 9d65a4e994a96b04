"""Finding, segmenting and measuring a nodule from one click, on generated nodules of known size and type.

Each test builds a small lung CT in physical space (noise, a chest wall, a vessel where asked) on an
anisotropic axial grid or an oblique one, with a nodule whose size and type are known.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import physical_grid, rotation_matrix
from notadiagnosis.errors import PointOutsideImageError, WeightsError
from notadiagnosis.finder import FAR_FROM_POINT_MM, LABEL_NON_SOLID, LABEL_SOLID, NO_NODULE_WARNING, NOT_CT_WARNING
from notadiagnosis.measure import SUMMARY_KEYS, axial_axes, measure_nodule
from notadiagnosis.references import SizeOnlyModel, lung_rads_category

LUNG_HU, SOLID_HU, GGO_HU, WALL_HU = -850.0, 30.0, -550.0, 40.0
CENTRE = np.array([3.0, -2.0, 1.5])
ANISOTROPIC = {"spacing": (0.7, 0.7, 2.5), "direction": None}
OBLIQUE = {"spacing": (0.8, 0.75, 1.25), "direction": rotation_matrix((1.0, 0.4, 0.2), 25.0)}
GRIDS = {"anisotropic": ANISOTROPIC, "oblique": OBLIQUE}


def _soft(distance_outside_mm: np.ndarray, edge_mm: float = 0.6) -> np.ndarray:
    return np.clip(0.5 - distance_outside_mm / (2.0 * edge_mm), 0.0, 1.0)


def make_lung_ct(spacing, direction=None, half_mm: float = 36.0, seed: int = 0, wall_x_mm=None,
                 vessel=None, shapes=()) -> sitk.Image:
    """A lung CT (int16 HU) around CENTRE: noise, optional chest wall (x > wall_x_mm), optional vessel
    ((point, direction, radius_mm)), and shapes: (kind, centre, semi_axes_mm, hu) painted in order."""
    spacing = np.asarray(spacing, dtype=float)
    direction = np.eye(3) if direction is None else np.asarray(direction)
    size = np.ceil(2 * half_mm / spacing).astype(int)
    image = sitk.Image([int(n) for n in size], sitk.sitkInt16)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    # Centre the grid on CENTRE whatever the direction.
    image.SetOrigin((CENTRE - direction @ ((size - 1) * spacing / 2.0)).tolist())
    xyz = physical_grid(image)
    hu = np.full(xyz.shape[:3], LUNG_HU, dtype=np.float32)
    if vessel is not None:
        point, axis, radius = vessel
        axis = np.asarray(axis, float) / np.linalg.norm(axis)
        offset = xyz - np.asarray(point)
        across = np.linalg.norm(offset - (offset @ axis)[..., None] * axis, axis=-1)
        hu += _soft(across - radius) * (WALL_HU - hu)
    if wall_x_mm is not None:
        hu += _soft(wall_x_mm - xyz[..., 0]) * (WALL_HU - hu)
    for centre, semi_axes, value in shapes:
        q = np.sqrt((((xyz - np.asarray(centre)) / np.asarray(semi_axes)) ** 2).sum(axis=-1))
        hu += _soft((q - 1.0) * min(semi_axes)) * (value - hu)
    hu += np.random.default_rng(seed).normal(0.0, 15.0, hu.shape).astype(np.float32)
    array = np.round(hu).astype(np.int16)
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


def sphere(diameter_mm: float, hu: float = SOLID_HU, centre=CENTRE):
    return (np.asarray(centre, float), (diameter_mm / 2.0,) * 3, hu)


def tolerance(image: sitk.Image) -> float:
    """One voxel of the CT: its in-plane size on an axial grid, its largest size on an oblique one."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    return float(spacing[:2].max() if np.allclose(direction, np.eye(3)) else spacing.max())


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
@pytest.mark.parametrize("diameter_mm", [6.0, 12.0, 24.0, 36.0])  # 36 mm: beyond the first find cube
def test_solid_sphere_is_measured_within_one_voxel(grid, diameter_mm):
    image = make_lung_ct(shapes=[sphere(diameter_mm)], **grid)
    result = measure_nodule(image, CENTRE + 1.0, model_card={})
    m = result.measurement
    assert m is not None, result.warnings
    tol = tolerance(image)
    assert m.long_axis_mm == pytest.approx(diameter_mm, abs=tol)
    assert m.short_axis_mm == pytest.approx(diameter_mm, abs=tol)
    assert m.equivalent_diameter_mm == pytest.approx(diameter_mm, abs=tol)
    assert m.volume_mm3 == pytest.approx(np.pi / 6 * diameter_mm ** 3, rel=0.25)
    assert m.type == "solid" and m.solid_mean_diameter_mm is None
    assert not m.calcified and not m.juxtapleural and not m.truncated
    assert np.linalg.norm(np.array(m.centre_lps) - CENTRE) < 0.5
    if diameter_mm >= 12.0:  # smaller ones are mostly partial-volume rim
        assert m.hu_percentiles[50] == pytest.approx(SOLID_HU, abs=60)


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_ellipsoid_long_and_short_axes_are_its_axial_diameters(grid):
    # Long axis along x (16 mm), short along y (10 mm), 8 mm tall: axial diameters 16 and 10.
    image = make_lung_ct(shapes=[(CENTRE, (8.0, 5.0, 4.0), SOLID_HU)], **grid)
    m = measure_nodule(image, CENTRE, model_card={}).measurement
    tol = tolerance(image)
    assert m.long_axis_mm == pytest.approx(16.0, abs=tol)
    assert m.short_axis_mm == pytest.approx(10.0, abs=tol)
    assert m.mean_diameter_mm == pytest.approx(13.0, abs=tol)
    ends = np.array(m.long_axis_lps)
    assert abs(ends[0, 2] - ends[1, 2]) < 1e-6 and ends[0, 2] == pytest.approx(m.axial_z_lps)
    direction = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
    assert abs(direction[0]) > 0.9  # along x, within a voxel's angle


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_part_solid_nodule_has_its_solid_core_measured_and_labelled(grid):
    image = make_lung_ct(shapes=[sphere(16.0, GGO_HU), sphere(7.0, SOLID_HU)], **grid)
    result = measure_nodule(image, CENTRE + np.array([4.0, 0.0, 0.0]), model_card={})
    m = result.measurement
    tol = tolerance(image)
    assert m.type == "part-solid"
    assert m.long_axis_mm == pytest.approx(16.0, abs=tol)
    assert m.solid_mean_diameter_mm == pytest.approx(7.0, abs=tol)
    assert m.lung_rads == "4A"  # solid component 6 to < 8 mm
    labels = sitk.GetArrayFromImage(result.mask)
    assert set(np.unique(labels)) == {0, LABEL_NON_SOLID, LABEL_SOLID}
    solid_mm3 = (labels == LABEL_SOLID).sum() * np.prod(image.GetSpacing())
    # The core's volume on the CT's grid (its 1.25 mm oblique voxels blur a 7 mm core most).
    assert solid_mm3 == pytest.approx(np.pi / 6 * 7.0 ** 3, rel=0.5)


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_ground_glass_nodule_is_found_and_typed(grid):
    image = make_lung_ct(shapes=[sphere(14.0, GGO_HU)], **grid)
    result = measure_nodule(image, CENTRE, model_card={})
    m = result.measurement
    assert m.type == "ground-glass" and m.lung_rads == "2"
    assert m.mean_diameter_mm == pytest.approx(14.0, abs=tolerance(image))
    assert set(np.unique(sitk.GetArrayFromImage(result.mask))) == {0, LABEL_NON_SOLID}


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_nodule_against_the_chest_wall_is_cut_from_the_wall(grid):
    # A 12 mm nodule whose centre is 4 mm from the wall: a third of it is inside the wall's plane.
    wall_x = CENTRE[0] + 4.0
    image = make_lung_ct(shapes=[sphere(12.0)], wall_x_mm=wall_x, **grid)
    m = measure_nodule(image, CENTRE - np.array([2.0, 0.0, 0.0]), model_card={}).measurement
    assert m is not None and m.juxtapleural
    # The part inside the lung is 10 mm along x (from centre - 6 to the wall); in y, the full 12 mm.
    assert m.long_axis_mm == pytest.approx(12.0, abs=2 * tolerance(image))
    assert m.volume_mm3 < 1.1 * np.pi / 6 * 12.0 ** 3
    assert np.array(m.long_axis_lps)[:, 0].max() < wall_x + 1.5


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_nodule_touching_a_vessel_leaves_the_vessel_out(grid):
    vessel = (CENTRE + np.array([0.0, 0.0, 0.0]), (0.3, 1.0, 0.2), 1.4)
    image = make_lung_ct(shapes=[sphere(10.0)], vessel=vessel, **grid)
    m = measure_nodule(image, CENTRE, model_card={}).measurement
    tol = tolerance(image)
    assert m.long_axis_mm == pytest.approx(10.0, abs=2 * tol)
    assert m.equivalent_diameter_mm == pytest.approx(10.0, abs=tol)
    assert not m.juxtapleural


@pytest.fixture(scope="module")
def oblique_nodule():
    # Lobulated: a 12 mm sphere and a 7 mm one overlapping it, on the oblique grid, beside a vessel.
    shapes = [sphere(12.0), sphere(7.0, centre=CENTRE + np.array([5.0, 2.0, 1.0]))]
    image = make_lung_ct(shapes=shapes, vessel=(CENTRE + np.array([0.0, 9.0, 0.0]), (1.0, 0.0, 0.3), 1.2), **OBLIQUE)
    reference = measure_nodule(image, CENTRE, model_card={}).measurement
    return image, np.array(reference.centre_lps)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(direction=st.tuples(*[st.floats(-1.0, 1.0)] * 3), fraction=st.floats(0.0, 0.8))
def test_any_click_inside_the_nodule_gives_the_same_centre(oblique_nodule, direction, fraction):
    image, reference_centre = oblique_nodule
    direction = np.asarray(direction)
    if np.linalg.norm(direction) < 1e-3:
        direction = np.array([1.0, 0.0, 0.0])
    click = CENTRE + fraction * 6.0 * direction / np.linalg.norm(direction)
    m = measure_nodule(image, click, model_card={}).measurement
    assert m is not None
    assert np.linalg.norm(np.array(m.centre_lps) - reference_centre) < 1.0
    assert m.centre_shift_mm == pytest.approx(np.linalg.norm(np.array(m.centre_lps) - click), abs=1e-6)


def test_click_a_few_millimetres_off_the_nodule_still_finds_it():
    image = make_lung_ct(shapes=[sphere(8.0)], **ANISOTROPIC)
    m = measure_nodule(image, CENTRE + np.array([0.0, 9.0, 0.0]), model_card={}).measurement
    assert m is not None and np.linalg.norm(np.array(m.centre_lps) - CENTRE) < 0.5
    assert m.centre_shift_mm == pytest.approx(9.0, abs=0.5)


@pytest.mark.parametrize("where", ["air", "wall", "vessel"])
def test_no_nodule_near_the_click_gives_a_warning_and_no_measurement(where):
    vessel = (CENTRE, (0.3, 1.0, 0.2), 1.4)
    image = make_lung_ct(wall_x_mm=CENTRE[0] + 15.0, vessel=vessel, **ANISOTROPIC)
    click = {"air": CENTRE + np.array([-14.0, 0.0, 0.0]), "wall": CENTRE + np.array([25.0, 0.0, 0.0]), "vessel": CENTRE}[where]
    before = sitk.GetArrayFromImage(image).copy()
    result = measure_nodule(image, click, model_card={})
    assert result.measurement is None and result.mask is None
    assert result.warnings == [NO_NODULE_WARNING.format(radius=10)]
    assert np.array_equal(sitk.GetArrayFromImage(image), before)


def test_an_image_that_is_not_a_ct_is_not_measured():
    image = make_lung_ct(shapes=[sphere(10.0)], **ANISOTROPIC)
    not_ct = sitk.Cast(sitk.RescaleIntensity(image, 0, 255), sitk.sitkUInt8)
    result = measure_nodule(not_ct, CENTRE, model_card={})
    assert result.measurement is None and result.warnings == [NOT_CT_WARNING]


def test_nodule_cut_by_the_ct_edge_is_measured_with_a_truncation_warning():
    image = make_lung_ct(shapes=[sphere(14.0, centre=CENTRE + np.array([0.0, 0.0, 31.0]))], **ANISOTROPIC)
    result = measure_nodule(image, CENTRE + np.array([0.0, 0.0, 30.0]), model_card={})
    assert result.measurement is not None and result.measurement.truncated
    assert any("truncated" in warning for warning in result.warnings)


def test_point_outside_the_ct_is_refused():
    image = make_lung_ct(shapes=[sphere(10.0)], **ANISOTROPIC)
    with pytest.raises(PointOutsideImageError):
        measure_nodule(image, CENTRE + 100.0, model_card={})


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_mask_is_a_label_map_on_the_cts_own_grid_and_writes_as_nrrd(grid, tmp_path):
    image = make_lung_ct(shapes=[sphere(10.0)], **grid)
    mask = measure_nodule(image, CENTRE, model_card={}).mask
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSpacing() == pytest.approx(image.GetSpacing())
    assert mask.GetDirection() == pytest.approx(image.GetDirection())
    # The crop's first voxel is a voxel of the CT: a whole-number index.
    index = np.array(image.TransformPhysicalPointToContinuousIndex(mask.GetOrigin()))
    assert np.allclose(index, np.round(index), atol=1e-4)
    # Every voxel whose centre lies well inside the sphere is labelled; none well outside.
    xyz = physical_grid(mask)
    radius = np.linalg.norm(xyz - CENTRE, axis=-1)
    labels = sitk.GetArrayFromImage(mask)
    assert labels[radius < 4.0].all() and not labels[radius > 6.5].any()
    sitk.WriteImage(mask, str(tmp_path / "nodule.nrrd"), True)
    again = sitk.ReadImage(str(tmp_path / "nodule.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(again), labels)


def test_size_only_probability_comes_from_the_card_and_is_absent_without_its_block():
    image = make_lung_ct(shapes=[sphere(10.0)], **ANISOTROPIC)
    card = {"size_only": {"feature": "log_long_axis_mm", "intercept": -10.0, "coefficient": 4.0}}
    m = measure_nodule(image, CENTRE, model_card=card).measurement
    assert m.size_only_probability == pytest.approx(1 / (1 + np.exp(10.0 - 4.0 * np.log(m.long_axis_mm))), abs=1e-9)
    assert measure_nodule(image, CENTRE, model_card={"name": "older"}).measurement.size_only_probability is None
    with pytest.raises(WeightsError, match="size_only"):
        SizeOnlyModel.from_card({"size_only": {"feature": "log_long_axis_mm"}})
    with pytest.raises(WeightsError, match="not 'log_long_axis_mm'"):
        SizeOnlyModel.from_card({"size_only": {"feature": "volume", "intercept": 0, "coefficient": 1}})


def test_bundled_card_carries_the_size_only_model():
    image = make_lung_ct(shapes=[sphere(10.0)], **ANISOTROPIC)
    m = measure_nodule(image, CENTRE).measurement
    assert 0.0 < m.size_only_probability < 1.0


@pytest.mark.parametrize("seed", range(6))
def test_long_axis_is_the_longest_chord_between_any_two_voxels_of_its_slice(seed):
    rng = np.random.default_rng(seed)
    noise = sitk.GetImageFromArray(rng.random((5, 28, 30)).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, float(rng.uniform(1.0, 3.0))))
    mask = smooth > np.percentile(smooth, rng.uniform(40.0, 80.0))
    long_mm, _short, (a, b), _ends, z = axial_axes(mask, 0.5)
    areas = mask.sum(axis=(1, 2))
    longest = 0.0
    for plane in mask[areas >= 0.6 * areas.max()]:  # the slices the long axis is searched on
        voxels = np.argwhere(plane).astype(float)
        longest = max(longest, float(np.sqrt(((voxels[:, None] - voxels[None]) ** 2).sum(-1).max())))
    assert long_mm == pytest.approx((longest + 1.0) * 0.5)
    assert mask[z][tuple(np.int_(a))] and mask[z][tuple(np.int_(b))]
    assert np.linalg.norm(np.subtract(a, b)) == pytest.approx(longest)


def test_the_bundled_size_only_model_is_read_again_when_its_card_changes(tmp_path, monkeypatch):
    from notadiagnosis import measure, weights

    card = json.loads(weights.default_model_path().read_text(encoding="utf-8"))
    card_path = tmp_path / "default.json"
    card_path.write_text(json.dumps(card), encoding="utf-8")
    monkeypatch.setattr(weights, "default_model_path", lambda: card_path)
    first = measure._bundled_size_only()
    assert first == SizeOnlyModel.from_card(card)
    card["size_only"]["intercept"] += 1.0
    mtime_ns = card_path.stat().st_mtime_ns
    card_path.write_text(json.dumps(card), encoding="utf-8")
    os.utime(card_path, ns=(mtime_ns + 10**9, mtime_ns + 10**9))
    assert measure._bundled_size_only() == SizeOnlyModel.from_card(card) != first


@pytest.mark.parametrize("mean, kind, solid, calcified, expected", [
    (5.9, "solid", None, 0.0, "2"), (6.0, "solid", None, 0.0, "3"), (7.96, "solid", None, 0.0, "4A"),
    (14.9, "solid", None, 0.0, "4A"), (15.0, "solid", None, 0.0, "4B"), (20.0, "solid", None, 0.9, "1"),
    (5.9, "part-solid", 3.0, 0.0, "2"), (6.0, "part-solid", 5.9, 0.0, "3"), (12.0, "part-solid", 6.0, 0.0, "4A"),
    (12.0, "part-solid", 8.0, 0.0, "4B"), (29.9, "ground-glass", None, 0.0, "2"), (30.0, "ground-glass", None, 0.0, "3"),
])
def test_lung_rads_v2022_baseline_thresholds(mean, kind, solid, calcified, expected):
    assert lung_rads_category(mean, kind, solid, calcified) == expected


def test_measurement_summary_has_exactly_the_documented_keys():
    image = make_lung_ct(shapes=[sphere(10.0)], **ANISOTROPIC)
    summary = measure_nodule(image, CENTRE, model_card={}).measurement.summary()
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["type"] == "solid" and summary["solid_mean_diameter_mm"] is None


# -- faint ground glass (thick slices blur it below the find stage's tissue threshold) ------------------
FAINT_GGO_HU = -700.0  # 150 HU above the lung: a ground-glass nodule as a 2.5 mm slice shows a faint one


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_faint_ground_glass_nodule_beside_a_vessel_is_found_without_the_vessel(grid):
    vessel = (CENTRE + np.array([0.0, 7.2, 0.0]), (1.0, 0.0, 0.3), 1.2)  # touches the nodule's edge
    image = make_lung_ct(shapes=[sphere(12.0, FAINT_GGO_HU)], vessel=vessel, **grid)
    result = measure_nodule(image, CENTRE + np.array([1.5, -1.0, 0.0]), model_card={})
    m = result.measurement
    assert m is not None, result.warnings
    assert m.type == "ground-glass" and m.lung_rads == "2"
    tol = tolerance(image)
    assert m.equivalent_diameter_mm == pytest.approx(12.0, abs=2 * tol)  # the vessel left out
    assert m.short_axis_mm == pytest.approx(12.0, abs=2 * tol)
    # Known limit: where the vessel's partial-volume halo meets the ground glass it stays in the mask,
    # lengthening the long axis by up to a vessel's width (13.9 and 15.7 mm measured here), never more.
    assert 12.0 - 2 * tol <= m.long_axis_mm <= 12.0 + 4.0
    assert np.linalg.norm(np.array(m.centre_lps) - CENTRE) < 1.0


def test_faint_ground_glass_nodule_against_the_chest_wall_is_found():
    wall_x = CENTRE[0] + 5.0
    image = make_lung_ct(shapes=[sphere(12.0, FAINT_GGO_HU)], wall_x_mm=wall_x, **ANISOTROPIC)
    m = measure_nodule(image, CENTRE - np.array([2.0, 0.0, 0.0]), model_card={}).measurement
    assert m is not None and m.type == "ground-glass" and m.juxtapleural
    # 11 mm of it inside the lung along x; the wall's partial-volume edge is left out.
    assert m.equivalent_diameter_mm == pytest.approx(11.5, abs=2 * tolerance(image))
    assert 12.0 - 2 * tolerance(image) <= m.long_axis_mm <= 12.0 + 3.0
    assert np.array(m.long_axis_lps)[:, 0].max() < wall_x


@pytest.mark.parametrize("where", ["speck", "beside", "haze", "bulla"])
def test_faint_density_that_is_no_ground_glass_nodule_gives_no_measurement(where):
    # speck: a 3 mm faint dot under the click; beside: a faint 10 mm nodule 8 mm from the click (the
    # faint pass looks only where the user clicked); haze: a faint 30 mm smear 60 HU above the lung;
    # bulla: plain lung beside a 40 mm bulla of air, which pulls the lung's median HU down.
    shapes = {"speck": [sphere(3.0, FAINT_GGO_HU)],
              "beside": [sphere(10.0, FAINT_GGO_HU, centre=CENTRE + np.array([0.0, 13.0, 0.0]))],
              "haze": [sphere(30.0, LUNG_HU + 60.0)],
              "bulla": [sphere(40.0, -1000.0, centre=CENTRE + np.array([23.0, 0.0, 0.0]))]}[where]
    image = make_lung_ct(shapes=shapes, **ANISOTROPIC)
    result = measure_nodule(image, CENTRE, model_card={})
    assert result.measurement is None and result.warnings == [NO_NODULE_WARNING.format(radius=10)]


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_a_point_well_outside_the_nodule_found_is_measured_with_a_warning(grid):
    """A click 7 mm outside a 6 mm nodule (within the search radius) finds it, and says the point is
    not on it; a click 2 mm outside the nodule, or inside it, says nothing of the kind."""
    image = make_lung_ct(shapes=[sphere(6.0)], **grid)
    far = measure_nodule(image, CENTRE + np.array([0.0, 10.0, 0.0]), model_card={})
    assert far.measurement is not None, far.warnings
    notes = [w for w in far.warnings if "outside the nodule found" in w]
    assert len(notes) == 1 and "centre 10." in notes[0]
    gap = float(notes[0].split("lies ")[1].split(" mm")[0])
    assert gap > FAR_FROM_POINT_MM and gap == pytest.approx(7.0, abs=1.0)
    for offset_mm in (5.0, 0.0):
        near = measure_nodule(image, CENTRE + np.array([0.0, offset_mm, 0.0]), model_card={})
        assert near.measurement is not None and not any("outside the nodule found" in w for w in near.warnings)
