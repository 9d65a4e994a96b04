"""The measured nodules in Slicer (issue 16's Slicer part), on slicer-core's real MRML: a Segmentation
node in the CT's space with one segment per point named after it, the refined centres as a new point
list (the user's points never move), the measurement columns in the results table, nothing invented
where no nodule is found, and the same replace/cancel rules as the other outputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML, headless) is needed for the module's tests")

from helpers import add_sphere, make_ct, save_random_model  # noqa: E402
from slicer_support import add_linear_transform, add_points, rigid_matrix, snapshot, assert_same_snapshot  # noqa: E402

from nadslicer import logic  # noqa: E402
from nadslicer.errors import CancelledError  # noqa: E402
from nadslicer.measurements import MEASUREMENT_COLUMNS, segment_mask_array  # noqa: E402
from nadslicer.results import read_results_table  # noqa: E402
from nadslicer.volumes import add_volume_from_image  # noqa: E402
from notadiagnosis import measure_nodule  # noqa: E402
from notadiagnosis.geometry import lps_to_ras  # noqa: E402

NODULE_LPS = np.array([4.0, -3.0, 2.0])
AIR_POINT_LPS = np.array([-20.0, 16.0, -6.0])  # in the lung's air, far from the nodule


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from notadiagnosis.classifier import Classifier

    return Classifier.load(str(save_random_model(tmp_path_factory.mktemp("model"), seed=6)), device="cpu")


@pytest.fixture(scope="module")
def ct_image():
    ct = make_ct(size=(80, 80, 30), spacing=(0.9, 0.9, 2.0), origin=(-36.0, -36.0, -30.0), background_hu=-1000.0)
    return add_sphere(add_sphere(ct, (0.0, 0.0, 0.0), 28.0, -830.0), tuple(NODULE_LPS), 6.0, 40.0)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _options(**kwargs):
    return logic.ClassificationOptions(device="CPU", **{"saliency": False, **kwargs})


def _setup(scene, ct_image, clicks_lps, labels, transform=None):
    volume = add_volume_from_image(scene, ct_image, "CT")
    points = add_points(scene, lps_to_ras(np.asarray(clicks_lps, dtype=float)), labels)
    if transform is not None:
        node = add_linear_transform(scene, transform, "Moved")
        for moved in (volume, points):
            moved.SetAndObserveTransformNodeID(node.GetID())
    return volume, points


def test_measurements_fill_their_columns_as_the_library_says(scene, ct_image, classifier):
    click = NODULE_LPS + [1.5, 0.5, 0.0]
    volume, points = _setup(scene, ct_image, [click], ["N1"])
    result = logic.classify(volume, points, _options(), classifier=classifier)
    expected = measure_nodule(ct_image, click, model_card=classifier.card).measurement.summary()
    row = read_results_table(result.table_node)[0]
    for name, unit, key, _description in MEASUREMENT_COLUMNS:
        if isinstance(expected[key], str):
            assert row[name] == expected[key]
        elif expected[key] is None:
            assert math.isnan(row[name])
        else:
            assert row[name] == pytest.approx(expected[key], abs=1e-9)
        if unit:
            assert result.table_node.GetColumnUnitLabel(name) == unit
    names = [result.table_node.GetTable().GetColumn(i).GetName() for i in range(result.table_node.GetTable().GetNumberOfColumns())]
    assert names[-1] == "Warning" and names.index("Long axis") > names.index("Uncertainty")
    assert "Nodules found and measured: 1 of 1" in result.status


def test_one_segment_per_point_named_after_it_on_the_cts_lattice(scene, ct_image, classifier):
    clicks = [NODULE_LPS, NODULE_LPS + [0.0, 2.0, 0.0]]
    volume, points = _setup(scene, ct_image, clicks, ["N1", "N1 again"])
    result = logic.classify(volume, points, _options(), classifier=classifier)
    segmentation = result.segmentation_node
    assert segmentation is not None and segmentation.GetAttribute("NotADiagnosis.Output") == "segmentation"
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["N1", "N1 again"]
    library_mask = measure_nodule(ct_image, clicks[0], model_card=classifier.card).mask
    voxels = segment_mask_array(segmentation, "N1")
    import SimpleITK as sitk

    assert int(voxels.sum()) == int((sitk.GetArrayViewFromImage(library_mask) > 0).sum()) > 100
    assert result.table_node.GetNodeReference("segmentation") is segmentation


def test_the_segmentation_and_centres_follow_the_ct_under_a_linear_transform(scene, ct_image, classifier):
    import vtk

    transform = rigid_matrix([0.2, 1.0, 0.3], 12.0, [15.0, -8.0, 30.0])
    volume, points = _setup(scene, ct_image, [NODULE_LPS], ["N1"], transform=transform)
    before = snapshot(volume, points)
    result = logic.classify(volume, points, _options(), classifier=classifier)
    assert result.segmentation_node.GetTransformNodeID() == volume.GetTransformNodeID()
    # The segment's first voxel, taken through the segment's geometry and the CT's transform, is a CT voxel
    # inside the nodule where the user sees it.
    labelmap = result.segmentation_node.GetSegmentation().GetNthSegment(0).GetRepresentation("Binary labelmap")
    image_to_local = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_local)
    mask = segment_mask_array(result.segmentation_node, "N1")
    k, j, i = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
    local = image_to_local.MultiplyPoint([float(i), float(j), float(k), 1.0])
    world = transform @ np.array(local)
    nodule_world = transform @ np.r_[lps_to_ras(NODULE_LPS), 1.0]
    assert np.linalg.norm(world[:3] - nodule_world[:3]) <= 6.5
    centre = [0.0, 0.0, 0.0]
    result.centres_node.GetNthControlPointPositionWorld(0, centre)
    assert np.linalg.norm(np.array(centre) - nodule_world[:3]) <= 1.0
    assert_same_snapshot(before, snapshot(volume, points))


def test_refined_centres_are_a_new_node_and_the_users_points_stay(scene, ct_image, classifier):
    click = NODULE_LPS + [2.0, -1.0, 0.0]
    volume, points = _setup(scene, ct_image, [click], ["N1"])
    before = snapshot(volume, points)
    result = logic.classify(volume, points, _options(), classifier=classifier)
    measured = measure_nodule(ct_image, click, model_card=classifier.card).measurement
    centres = result.centres_node
    assert centres is not points and centres.GetLocked() and centres.GetNumberOfControlPoints() == 1
    assert centres.GetNthControlPointLabel(0) == "N1 centre"
    position = [0.0, 0.0, 0.0]
    centres.GetNthControlPointPositionWorld(0, position)
    np.testing.assert_allclose(position, lps_to_ras(np.asarray(measured.centre_lps)), atol=1e-9)
    assert_same_snapshot(before, snapshot(volume, points))


def test_no_nodule_near_a_point_invents_no_measurement(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image, [NODULE_LPS, AIR_POINT_LPS], ["N1", "Air"])
    result = logic.classify(volume, points, _options(), classifier=classifier)
    rows = read_results_table(result.table_node)
    assert rows[1]["Type"] == "" and rows[1]["Lung-RADS"] == ""
    assert all(math.isnan(rows[1][name]) for name, _u, key, _d in MEASUREMENT_COLUMNS if key not in ("type", "lung_rads"))
    assert rows[1]["Warning"]
    assert 0.0 <= rows[1]["Probability"] <= 1.0  # the classification itself is unchanged
    segments = result.segmentation_node.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == ["N1"]
    assert result.centres_node.GetNumberOfControlPoints() == 1
    assert "Nodules found and measured: 1 of 2" in result.status


def test_without_measuring_there_are_no_measurement_columns_or_nodes(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image, [NODULE_LPS], ["N1"])
    result = logic.classify(volume, points, _options(measure=False), classifier=classifier)
    assert result.segmentation_node is None and result.centres_node is None
    assert "Long axis" not in read_results_table(result.table_node)[0]
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_a_repeated_run_replaces_the_segmentation_and_centres(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image, [NODULE_LPS], ["N1"])
    first = logic.classify(volume, points, _options(), classifier=classifier)
    logic.classify(volume, points, _options(), classifier=classifier, previous=first.outputs)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert first.segmentation_node.GetScene() is None and first.centres_node.GetScene() is None


def test_cancel_while_measuring_keeps_nothing(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image, [NODULE_LPS, NODULE_LPS + [1.0, 0.0, 0.0]], ["N1", "N2"])
    count = scene.GetNumberOfNodes()
    messages = []

    def progress(done, total, message):
        messages.append(message)
        return not message.startswith("Measuring N2")

    with pytest.raises(CancelledError):
        logic.classify(volume, points, _options(), progress=progress, classifier=classifier)
    assert scene.GetNumberOfNodes() == count
    assert "Measuring N1" in messages
