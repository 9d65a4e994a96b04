"""The Slicer module's geometry on real MRML (slicer-core, headless): volume nodes <-> library images,
world positions of control points, linear transforms hardened into copies, non-linear ones refused."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML, headless) is needed for the module's tests")

from helpers import add_sphere, bright_centroid_zyx, make_ct, rotation_matrix  # noqa: E402
from slicer_support import add_grid_transform, add_linear_transform, add_points, rigid_matrix  # noqa: E402

from nadslicer.errors import NonLinearTransformError  # noqa: E402
from nadslicer.points import placed_points_world, require_points  # noqa: E402
from nadslicer.validation import count_placed_points, input_problem  # noqa: E402
from nadslicer.volumes import (  # noqa: E402
    RAS_TO_LPS,
    add_volume_from_image,
    ijk_to_ras,
    ijk_to_world_ras,
    volume_to_image,
)
from notadiagnosis.geometry import extract_patch, lps_to_ras, ras_to_lps  # noqa: E402

OBLIQUE = rotation_matrix([0.3, -1.0, 0.5], 23.0)


def _random_ct(seed: int = 0, size=(23, 17, 11), spacing=(0.7, 1.1, 2.5), direction=OBLIQUE, origin=(-31.0, 12.5, -140.0)):
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.integers(-1024, 2000, size=tuple(reversed(size)), dtype=np.int16))
    image.SetSpacing(spacing)
    image.SetDirection(np.asarray(direction).ravel().tolist())
    image.SetOrigin(origin)
    return image


def _index_to_lps(image: sitk.Image, index) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))


def _world_ras_of_local(transform_node, ras) -> np.ndarray:
    """Slicer's own mapping of a point from the node's space to world (VTK transform pipeline)."""
    import vtk

    to_world = vtk.vtkGeneralTransform()
    transform_node.GetTransformToWorld(to_world)
    return np.array(to_world.TransformPoint([float(v) for v in ras]))


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_anisotropic_oblique_volume_round_trips_exactly(scene):
    image = _random_ct()
    node = add_volume_from_image(scene, image, "CT")
    back = volume_to_image(node)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)


def test_volume_node_ijk_to_ras_is_the_lps_geometry_with_x_and_y_flipped(scene):
    image = _random_ct(seed=1)
    node = add_volume_from_image(scene, image, "CT")
    matrix = ijk_to_ras(node)
    for index in ([0, 0, 0], [22, 0, 0], [0, 16, 10], [11.5, 8.25, 3.0]):
        ras = matrix @ np.append(index, 1.0)
        np.testing.assert_allclose(ras[:3], lps_to_ras(_index_to_lps(image, index)), atol=1e-9)
    # Slicer's own spacing/origin accessors agree with the image.
    np.testing.assert_allclose(node.GetSpacing(), image.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), lps_to_ras(np.array(image.GetOrigin())), atol=1e-9)


def test_volume_under_nested_linear_transforms_is_read_in_world_space(scene):
    image = _random_ct(seed=2)
    node = add_volume_from_image(scene, image, "CT")
    outer = add_linear_transform(scene, rigid_matrix([0, 0, 1], 30.0, [5.0, -7.0, 12.0]), "outer")
    inner = add_linear_transform(scene, rigid_matrix([1, 1, 0], -17.0, [-3.0, 2.0, 40.0]), "inner", parent=outer)
    node.SetAndObserveTransformNodeID(inner.GetID())
    local_before = ijk_to_ras(node)

    world = volume_to_image(node)

    for index in ([0, 0, 0], [22, 16, 10], [5, 9, 2]):
        local_ras = local_before @ np.append(index, 1.0)
        expected_world_ras = _world_ras_of_local(inner, local_ras[:3])
        np.testing.assert_allclose(lps_to_ras(_index_to_lps(world, index)), expected_world_ras, atol=1e-6)
    # The voxels are the node's, the node's own geometry and transform are untouched.
    assert np.array_equal(sitk.GetArrayViewFromImage(world), sitk.GetArrayViewFromImage(image))
    assert np.array_equal(ijk_to_ras(node), local_before)
    assert node.GetTransformNodeID() == inner.GetID()


def test_scaling_transform_scales_the_spacing(scene):
    image = _random_ct(seed=3, direction=np.eye(3))
    node = add_volume_from_image(scene, image, "CT")
    scale = np.diag([2.0, 0.5, 1.5, 1.0])
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, scale, "scale").GetID())
    world = volume_to_image(node)
    np.testing.assert_allclose(world.GetSpacing(), np.array(image.GetSpacing()) * [2.0, 0.5, 1.5], rtol=1e-12)
    np.testing.assert_allclose(ijk_to_world_ras(node), scale @ ijk_to_ras(node), atol=1e-12)


def test_control_points_are_read_at_their_world_position(scene):
    local = np.array([[10.0, -20.0, 30.0], [-5.5, 0.25, 7.0]])
    points = add_points(scene, local, ["a", "b"])
    transform = add_linear_transform(scene, rigid_matrix([0, 1, 0], 40.0, [1.0, 2.0, 3.0]))
    points.SetAndObserveTransformNodeID(transform.GetID())
    read = placed_points_world(points)
    assert read.labels == ["a", "b"]
    for row, position in zip(read.positions_ras, local):
        np.testing.assert_allclose(row, _world_ras_of_local(transform, position), atol=1e-9)
    # The node still stores its local positions.
    stored = [0.0, 0.0, 0.0]
    points.GetNthControlPointPosition(0, stored)
    np.testing.assert_allclose(stored, local[0])


def test_unplaced_control_points_are_skipped(scene):
    points = add_points(scene, np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]), ["p1", "p2", "p3"])
    points.UnsetNthControlPointPosition(1)
    assert count_placed_points(points) == 2
    assert placed_points_world(points).labels == ["p1", "p3"]
    assert placed_points_world(points).indices == [0, 2]


def test_point_on_a_transformed_volume_lands_on_the_same_voxels(scene):
    """End to end: a bright sphere in the CT, the CT moved by a linear transform, a point placed on the
    sphere where the user sees it (world): the library's patch around that point is centred on the sphere."""
    image = make_ct(size=(90, 80, 40), spacing=(0.8, 0.9, 2.0), direction=OBLIQUE, origin=(-30.0, -35.0, -40.0))
    centre_local_lps = np.array(image.TransformContinuousIndexToPhysicalPoint([45.0, 40.0, 20.0]))
    image = add_sphere(image, centre_local_lps, 6.0, 300.0)
    node = add_volume_from_image(scene, image, "CT")
    transform = add_linear_transform(scene, rigid_matrix([1, -1, 2], 35.0, [20.0, -15.0, 60.0]))
    node.SetAndObserveTransformNodeID(transform.GetID())

    centre_world_ras = _world_ras_of_local(transform, lps_to_ras(centre_local_lps))
    points = add_points(scene, centre_world_ras[None], ["nodule"])
    world_image = volume_to_image(node)
    point_lps = ras_to_lps(placed_points_world(points).positions_ras[0])
    patch = extract_patch(world_image, point_lps)

    centroid = bright_centroid_zyx(patch.array_hu, 100.0)
    np.testing.assert_allclose(centroid, [32.0, 32.0, 32.0], atol=0.75)


@pytest.mark.parametrize("which", ["volume", "point list"])
def test_non_linear_transform_is_refused_with_what_to_do(scene, which):
    node = add_volume_from_image(scene, _random_ct(seed=4), "CT")
    points = add_points(scene, np.zeros((1, 3)), ["p"])
    warp = add_grid_transform(scene)
    (node if which == "volume" else points).SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(NonLinearTransformError, match=r"non-linear transform 'Warp'.*[Hh]arden"):
        if which == "volume":
            volume_to_image(node)
        else:
            require_points(points)
    assert "non-linear" in input_problem(node, points)


def test_linear_transform_above_grid_still_counts_as_non_linear(scene):
    """A linear transform whose parent is a grid is non-linear to world."""
    node = add_volume_from_image(scene, _random_ct(seed=5), "CT")
    warp = add_grid_transform(scene)
    linear = add_linear_transform(scene, np.eye(4), "linear", parent=warp)
    node.SetAndObserveTransformNodeID(linear.GetID())
    with pytest.raises(NonLinearTransformError):
        volume_to_image(node)


def test_input_problem_names_what_is_missing(scene):
    node = add_volume_from_image(scene, _random_ct(seed=6), "CT")
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Empty")
    assert "input volume" in input_problem(None, empty)
    assert "point list" in input_problem(node, None)
    assert "Place at least one point" in input_problem(node, empty)
    no_voxels = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Blank")
    assert "no voxels" in input_problem(no_voxels, empty)
    empty.AddControlPoint(0.0, 0.0, 0.0, "p")
    assert input_problem(node, empty) is None


def test_ras_to_lps_matrix_is_its_own_inverse():
    np.testing.assert_array_equal(RAS_TO_LPS @ RAS_TO_LPS, np.eye(4))


def _read_with_slicer(scene, path):
    """A volume node filled by Slicer's own reader (the storage node Slicer uses for Add Data)."""
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_volume_read_by_slicer_converts_to_the_geometry_simpleitk_reads(scene, tmp_path, suffix):
    """Independent of the module's own node writer: Slicer's reader sets IJK->RAS from the file, the
    module's conversion must give what SimpleITK reads from the same file."""
    image = _random_ct(seed=7)
    path = tmp_path / f"oblique{suffix}"
    sitk.WriteImage(image, str(path))
    converted = volume_to_image(_read_with_slicer(scene, path))
    reference = sitk.ReadImage(str(path))
    np.testing.assert_allclose(converted.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(converted.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(converted.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(reference))


@pytest.mark.shared
def test_real_chest_ct_read_by_slicer_matches_simpleitk(scene, chest_ct_path):
    converted = volume_to_image(_read_with_slicer(scene, chest_ct_path))
    reference = sitk.ReadImage(str(chest_ct_path))
    assert converted.GetSize() == reference.GetSize() == (512, 512, 99)
    np.testing.assert_allclose(converted.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(converted.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(converted.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(reference))


def test_points_saved_by_slicer_are_the_points_the_module_classifies(scene, tmp_path):
    """The command line reads Slicer's .mrk.json files; it must see the same LPS points as the module."""
    from notadiagnosis.readers import read_markups_json

    points = add_points(scene, np.array([[10.5, -20.25, 30.0], [-1.0, 2.0, -3.0]]), ["a", "b"])
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "points.mrk.json"))
    assert storage.WriteData(points) == 1
    read = read_markups_json(tmp_path / "points.mrk.json")
    module_points = placed_points_world(points)
    assert [p.label for p in read] == module_points.labels
    np.testing.assert_allclose([p.point_lps for p in read], ras_to_lps(module_points.positions_ras), atol=1e-9)
