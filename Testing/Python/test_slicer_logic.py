"""The Slicer module's logic on real MRML (slicer-core, headless): classification writes a new table
(and saliency volume) equal to what the library says for the same points, inputs stay untouched,
bad inputs are refused with nothing written, cancel keeps nothing.

The model is a small random-initialised network saved to a temporary folder and loaded by path (the
product's default model is trained, never random)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML, headless) is needed for the module's tests")

from helpers import add_sphere, make_ct, rotation_matrix, save_random_model  # noqa: E402
from slicer_support import (  # noqa: E402
    add_grid_transform,
    add_linear_transform,
    add_points,
    assert_same_snapshot,
    rigid_matrix,
    snapshot,
)

from nadslicer import logic  # noqa: E402
from nadslicer.errors import NoPointsError, NonLinearTransformError, PointOutsideVolumeError  # noqa: E402
from nadslicer.results import COLUMNS, center_slice_views, read_results_table, row_position_ras  # noqa: E402
from nadslicer.volumes import add_volume_from_image, volume_to_image  # noqa: E402
from notadiagnosis.errors import InputError, NotADiagnosisError  # noqa: E402
from notadiagnosis.geometry import lps_to_ras, ras_to_lps  # noqa: E402

OBLIQUE = rotation_matrix([1.0, 0.2, -0.4], 15.0)
NODULES_LPS = np.array([[-12.0, -5.0, -8.0], [10.0, 6.0, 4.0], [0.0, 12.0, -2.0]])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("model"), seed=3)


@pytest.fixture(scope="module")
def classifier(model_path):
    from notadiagnosis.classifier import Classifier

    return Classifier.load(str(model_path), device="cpu")


@pytest.fixture(scope="module")
def ct_image():
    """A small oblique anisotropic CT with air, tissue and three 'nodules'."""
    image = make_ct(size=(96, 90, 36), spacing=(0.75, 0.8, 2.0), direction=OBLIQUE, origin=(-36.0, -36.0, -36.0), background_hu=-1000.0)
    image = add_sphere(image, (0.0, 0.0, 0.0), 26.0, -820.0)  # lung-like region, air around
    for centre, radius in zip(NODULES_LPS, (4.0, 7.0, 3.0)):
        image = add_sphere(image, centre, radius, 40.0)
    return image


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _setup(scene, ct_image, transform_matrix=None, points_under_transform=False):
    """The CT as a volume node (optionally under a linear transform) and points placed on the nodules
    where they appear in world coordinates: either stored in world coordinates, or stored in the
    CT's own coordinates under the same transform (as when both were moved together)."""
    volume = add_volume_from_image(scene, ct_image, "CT")
    nodules_ras = lps_to_ras(NODULES_LPS)
    if transform_matrix is None:
        return volume, add_points(scene, nodules_ras, ["N1", "N2", "N3"])
    transform = add_linear_transform(scene, transform_matrix, "Moved")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    if points_under_transform:
        points = add_points(scene, nodules_ras, ["N1", "N2", "N3"])
        points.SetAndObserveTransformNodeID(transform.GetID())
        return volume, points
    nodules_world_ras = (transform_matrix @ np.c_[nodules_ras, np.ones(len(nodules_ras))].T).T[:, :3]
    return volume, add_points(scene, nodules_world_ras, ["N1", "N2", "N3"])


def _options(**kwargs):
    # Measuring is covered by test_slicer_measurements.py; these tests look at the classification.
    return logic.ClassificationOptions(device="CPU", **{"measure": False, **kwargs})


def _node_count(scene, class_name):
    return scene.GetNumberOfNodesByClass(class_name)


def test_classification_writes_a_new_results_table(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    tables_before = _node_count(scene, "vtkMRMLTableNode")

    result = logic.classify(volume, points, _options(saliency=False), classifier=classifier)

    assert _node_count(scene, "vtkMRMLTableNode") == tables_before + 1
    table = result.table_node
    assert [table.GetTable().GetColumn(i).GetName() for i in range(table.GetTable().GetNumberOfColumns())] == list(COLUMNS)
    rows = read_results_table(table)
    assert [row["Point"] for row in rows] == ["N1", "N2", "N3"]
    for row, nodule in zip(rows, lps_to_ras(NODULES_LPS)):
        np.testing.assert_allclose([row["R"], row["A"], row["S"]], nodule, atol=1e-9)
        assert 0.0 <= row["Probability"] <= 1.0
        assert math.isfinite(row["Uncertainty"]) and row["Uncertainty"] >= 0.0
    assert table.GetLocked()
    assert table.GetUseColumnTitleAsColumnHeader()
    assert table.GetAttribute("NotADiagnosis.Model") == "random-test-model"
    assert table.GetAttribute("NotADiagnosis.InputVolume") == volume.GetID()
    assert table.GetColumnUnitLabel("R") == "mm"
    assert "Not a diagnosis" in result.status and "random-test-model" in result.status and "cpu" in result.status
    assert result.saliency_node is None


def test_second_run_adds_another_table_and_keeps_the_first(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    first = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
    second = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
    assert first.table_node.GetID() != second.table_node.GetID()
    assert first.table_node.GetName() != second.table_node.GetName()
    assert read_results_table(first.table_node) == read_results_table(second.table_node)


@pytest.mark.parametrize(
    "moved, points_under_transform",
    [(False, False), (True, False), (True, True)],
    ids=["plain", "volume-under-linear-transform", "volume-and-points-under-linear-transform"],
)
def test_logic_gives_the_library_probabilities_for_the_same_points(scene, ct_image, classifier, moved, points_under_transform):
    """The library given the CT (moved the same way, built here without the module's code) and the
    points in LPS must agree with the table the logic wrote."""
    matrix = rigid_matrix([0, 1, 1], 25.0, [15.0, -10.0, 30.0]) if moved else None
    volume, points = _setup(scene, ct_image, matrix, points_under_transform)

    result = logic.classify(volume, points, _options(saliency=False, tta=True), classifier=classifier)

    reference = sitk.Image(ct_image)
    if moved:
        # Moving the CT by M (RAS) moves its LPS geometry by F M F, F = diag(-1, -1, 1).
        flip = np.diag([-1.0, -1.0, 1.0])
        linear = flip @ matrix[:3, :3] @ flip
        direction = linear @ np.asarray(ct_image.GetDirection()).reshape(3, 3)
        reference.SetDirection(direction.ravel().tolist())
        reference.SetOrigin((linear @ np.asarray(ct_image.GetOrigin()) + flip @ matrix[:3, 3]).tolist())
    expected = classifier.predict(reference, NODULES_LPS if not moved else _moved_lps(matrix), tta=True)
    rows = read_results_table(result.table_node)
    np.testing.assert_allclose([row["Probability"] for row in rows], [p.probability for p in expected], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([row["Uncertainty"] for row in rows], [p.uncertainty for p in expected], rtol=1e-4, atol=1e-6)
    assert [row["Warning"] for row in rows] == ["; ".join(p.warnings) for p in expected]


def _moved_lps(matrix):
    ras = lps_to_ras(NODULES_LPS)
    return ras_to_lps((matrix @ np.c_[ras, np.ones(len(ras))].T).T[:, :3])


def test_inputs_are_not_modified(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image, rigid_matrix([1, 0, 0], 10.0, [0.0, 5.0, 0.0]), points_under_transform=True)
    before = snapshot(volume, points)
    volume_mtime = volume.GetMTime()
    image_mtime = volume.GetImageData().GetMTime()

    logic.classify(volume, points, _options(saliency=True), classifier=classifier)

    assert_same_snapshot(before, snapshot(volume, points))
    assert volume.GetImageData().GetMTime() == image_mtime
    assert volume.GetMTime() == volume_mtime


def test_saliency_volume_lies_in_the_ct_space_and_is_shown_as_overlay(scene, ct_image, classifier):
    moved = rigid_matrix([0, 0, 1], 20.0, [3.0, 4.0, 5.0])
    volume, points = _setup(scene, ct_image, moved)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")

    result = logic.classify(volume, points, _options(saliency=True), classifier=classifier)

    saliency = result.saliency_node
    assert saliency is not None and saliency.GetID() != volume.GetID()
    assert saliency.GetTransformNodeID() == volume.GetTransformNodeID()  # follows the CT if it moves
    values = slicer.util.arrayFromVolume(saliency)
    assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0
    # Same lattice as the CT: spacing and direction equal, origin on a CT voxel.
    ct_world, map_world = volume_to_image(volume), volume_to_image(saliency)
    np.testing.assert_allclose(map_world.GetSpacing(), ct_world.GetSpacing(), rtol=1e-9)
    np.testing.assert_allclose(map_world.GetDirection(), ct_world.GetDirection(), atol=1e-9)
    index = np.array(ct_world.TransformPhysicalPointToContinuousIndex(map_world.GetOrigin()))
    np.testing.assert_allclose(index, np.round(index), atol=1e-6)
    # Each point's own map, from the library, is contained voxel for voxel.
    # Each map is of the cube that was classified (centred on the nodule found near the point).
    rows = read_results_table(result.table_node)
    assert any(row["Classified R"] != row["R"] for row in rows)
    for point_lps in ras_to_lps(np.array([[r["Classified R"], r["Classified A"], r["Classified S"]] for r in rows])):
        own = classifier.saliency(ct_world, point_lps)
        start = np.round(map_world.TransformPhysicalPointToContinuousIndex(own.GetOrigin())).astype(int)
        size = own.GetSize()
        window = values[start[2]:start[2] + size[2], start[1]:start[1] + size[1], start[0]:start[0] + size[0]]
        assert np.all(window >= sitk.GetArrayViewFromImage(own) - 1e-6)
    assert composite.GetForegroundVolumeID() == saliency.GetID()
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert 0.0 < composite.GetForegroundOpacity() < 1.0
    display = saliency.GetDisplayNode()
    assert display.GetColorNodeID() == scene.GetSingletonNode("NotADiagnosisSaliency", "vtkMRMLColorTableNode").GetID()
    assert display.GetApplyThreshold()
    assert result.table_node.GetNodeReferenceID("saliency") == saliency.GetID()


def test_without_test_time_augmentation_the_uncertainty_is_nan(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    result = logic.classify(volume, points, _options(saliency=False, tta=False), classifier=classifier)
    assert all(math.isnan(row["Uncertainty"]) for row in read_results_table(result.table_node))
    assert result.table_node.GetAttribute("NotADiagnosis.TestTimeAugmentation") == "False"


def _assert_nothing_written(scene, before_counts):
    for class_name, count in before_counts.items():
        assert _node_count(scene, class_name) == count, f"a {class_name} was written"


def _counts(scene):
    return {name: _node_count(scene, name) for name in ("vtkMRMLTableNode", "vtkMRMLScalarVolumeNode")}


def test_point_list_without_placed_points_is_refused(scene, ct_image, classifier):
    volume, _ = _setup(scene, ct_image)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Empty")
    unplaced = add_points(scene, np.zeros((1, 3)), ["p"], name="Unplaced")
    unplaced.UnsetNthControlPointPosition(0)
    counts = _counts(scene)
    for node in (empty, unplaced):
        with pytest.raises(NoPointsError, match=f"'{node.GetName()}' has no placed points"):
            logic.classify(volume, node, _options(), classifier=classifier)
    with pytest.raises(NoPointsError):
        logic.classify(volume, None, _options(), classifier=classifier)
    _assert_nothing_written(scene, counts)


def test_point_outside_the_volume_is_refused_by_name(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    points.AddControlPoint(0.0, 0.0, 400.0, "far")
    counts = _counts(scene)
    with pytest.raises(PointOutsideVolumeError, match=r"'far' .*outside the volume 'CT'"):
        logic.classify(volume, points, _options(), classifier=classifier)
    _assert_nothing_written(scene, counts)


def test_non_linear_transform_is_refused_and_nothing_written(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    volume.SetAndObserveTransformNodeID(add_grid_transform(scene).GetID())
    counts = _counts(scene)
    with pytest.raises(NonLinearTransformError):
        logic.classify(volume, points, _options(), classifier=classifier)
    _assert_nothing_written(scene, counts)


def test_missing_volume_is_refused(scene, ct_image, classifier):
    _, points = _setup(scene, ct_image)
    with pytest.raises(InputError, match="No volume is selected"):
        logic.classify(None, points, _options(), classifier=classifier)


def test_errors_the_user_can_fix_share_the_library_base_class():
    from nadslicer import errors

    for name in ("NoPointsError", "PointOutsideVolumeError", "NonLinearTransformError", "VolumeError", "DependencyError"):
        assert issubclass(getattr(errors, name), NotADiagnosisError)


@pytest.mark.parametrize("stop_at", [0, 1, 3, 4])
def test_cancel_keeps_nothing(scene, ct_image, classifier, stop_at):
    """Cancelling while the model loads, during classification or during saliency leaves the scene as it was."""
    from nadslicer.errors import CancelledError

    volume, points = _setup(scene, ct_image)
    counts = _counts(scene)
    seen = []

    def progress(done, total, message):
        seen.append((done, total, message))
        return done < stop_at  # False cancels

    with pytest.raises(CancelledError):
        logic.classify(volume, points, _options(saliency=True), progress=progress, classifier=classifier)
    _assert_nothing_written(scene, counts)
    assert seen and all(total == 6 for _, total, _ in seen)


def test_cancel_takes_effect_within_one_point(scene, ct_image, classifier):
    """Cancel after the first point: no second point is classified (not a whole batch of 32)."""
    from nadslicer.errors import CancelledError

    volume, _ = _setup(scene, ct_image)
    many = add_points(scene, np.repeat(lps_to_ras(NODULES_LPS), 4, axis=0), [f"P{i}" for i in range(12)], name="Many")
    reported = []

    def progress(done, total, message):
        reported.append(done)
        return done < 1

    with pytest.raises(CancelledError):
        logic.classify(volume, many, _options(saliency=False), progress=progress, classifier=classifier)
    assert max(reported) == 1


def test_progress_is_reported_after_every_point(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    seen = []
    logic.classify(volume, points, _options(saliency=True),
                   progress=lambda done, total, message: seen.append((done, total, message)), classifier=classifier)
    done_values = [done for done, _, _ in seen]
    assert done_values == sorted(done_values) and done_values[-1] == 6
    assert {1, 2, 3, 4, 5} <= set(done_values)


def test_a_cancel_is_kept_once_made():
    """The window may read a progress dialog whose 'cancelled' state resets on its last step; the job keeps it."""
    from nadslicer.errors import CancelledError

    job = logic.Job()
    job.update(1, 3, "Classifying")
    job.cancel()
    with pytest.raises(CancelledError):
        job.update(3, 3, "Writing results")
    assert job.cancelled
    with pytest.raises(CancelledError):
        job.check()


def test_classifier_is_loaded_once_per_model_device_and_pinned_digest(model_path):
    from notadiagnosis.weights import sha256_of

    logic.clear_classifier_cache()
    try:
        first = logic.get_classifier(str(model_path), "CPU")
        assert logic.get_classifier(str(model_path), "cpu") is first
        assert logic.get_classifier(str(model_path.parent / "." / model_path.name), "CPU") is first
        # The pin names the file the runtime loads: the .onnx file on ONNX Runtime, the default.
        pinned = logic.get_classifier(str(model_path), "CPU", sha256_of(model_path.with_suffix(".onnx")).upper())
        assert pinned is not first and pinned.card == first.card
        assert first.card["name"] == "random-test-model"
    finally:
        logic.clear_classifier_cache()


def test_a_wrong_pinned_digest_is_refused(model_path):
    from notadiagnosis.errors import WeightsError

    logic.clear_classifier_cache()
    try:
        with pytest.raises(WeightsError):
            logic.get_classifier(str(model_path), "CPU", "0" * 64)
    finally:
        logic.clear_classifier_cache()


def test_classify_loads_the_model_given_by_path(scene, ct_image, model_path, classifier):
    logic.clear_classifier_cache()
    try:
        volume, points = _setup(scene, ct_image)
        result = logic.classify(volume, points, _options(saliency=False, model_path=str(model_path)))
        by_injection = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
        assert read_results_table(result.table_node) == read_results_table(by_injection.table_node)
    finally:
        logic.clear_classifier_cache()


def test_unknown_device_is_refused():
    with pytest.raises(InputError, match="Unknown device"):
        logic.device_name("TPU")


def test_clicking_a_row_centres_the_slice_views_on_its_point(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    result = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
    slice_nodes = []
    for name, orientation in (("Red", "SetOrientationToAxial"), ("Green", "SetOrientationToCoronal")):
        node = slicer.vtkMRMLSliceNode()
        node.SetLayoutName(name)
        getattr(node, orientation)()
        scene.AddNode(node)
        slice_nodes.append(node)

    position = row_position_ras(result.table_node, 1)
    np.testing.assert_allclose(position, lps_to_ras(NODULES_LPS[1]))
    center_slice_views(scene, position)
    for node in slice_nodes:
        matrix = node.GetSliceToRAS()
        np.testing.assert_allclose([matrix.GetElement(i, 3) for i in range(3)], position, atol=1e-6)
    assert row_position_ras(result.table_node, 3) is None
    assert row_position_ras(result.table_node, -1) is None


def test_status_names_the_bundled_model_before_the_first_classify(tmp_path):
    import json
    from pathlib import Path

    from nadslicer.model_info import DEFAULT_CARD, bundled_model_summary, library_dir
    from notadiagnosis.weights import DEFAULT_MODEL_NAME, bundled_models_dir

    # The card the status line reads is the library's default model card.
    assert library_dir() / DEFAULT_CARD == bundled_models_dir() / f"{DEFAULT_MODEL_NAME}.json"
    (tmp_path / "models").mkdir()
    (tmp_path / DEFAULT_CARD).write_text(json.dumps({"name": "default", "version": "1.2.3"}), encoding="utf-8")
    assert "Model default 1.2.3" in bundled_model_summary(tmp_path)
    assert "No default model is bundled" in bundled_model_summary(tmp_path / "elsewhere")
    (tmp_path / DEFAULT_CARD).write_text("{not json", encoding="utf-8")
    assert "cannot be read" in bundled_model_summary(tmp_path)
    assert isinstance(bundled_model_summary(), str) and Path(library_dir()).name == "notadiagnosis"


def test_vector_volume_is_refused(scene):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    from nadslicer.errors import VolumeError

    image_data = vtk.vtkImageData()
    image_data.SetDimensions(8, 8, 4)
    image_data.GetPointData().SetScalars(numpy_to_vtk(np.zeros((8 * 8 * 4, 3), dtype=np.uint8), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Photo")
    node.SetAndObserveImageData(image_data)
    with pytest.raises(VolumeError, match="3 components per voxel"):
        volume_to_image(node)


def test_failure_while_writing_the_overlay_leaves_no_table(scene, ct_image, classifier, monkeypatch):
    volume, points = _setup(scene, ct_image)
    counts = _counts(scene)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(logic, "add_saliency_volume", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.classify(volume, points, _options(saliency=True), classifier=classifier)
    _assert_nothing_written(scene, counts)


def _volume_like(scene, class_name, name, image):
    from nadslicer.volumes import set_volume_from_image

    node = scene.AddNewNodeByClass(class_name, name)
    set_volume_from_image(node, image)
    return node


@pytest.mark.parametrize("class_name, crop, message", [
    ("vtkMRMLLabelMapVolumeNode", False, "is a label map"),
    ("vtkMRMLScalarVolumeNode", True, "a single slice"),  # the command line refuses it too
])
def test_label_maps_and_single_slices_are_refused_and_nothing_written(scene, ct_image, classifier, class_name, crop, message):
    from nadslicer.errors import VolumeError
    from nadslicer.validation import input_problem

    _, points = _setup(scene, ct_image)
    image = ct_image[:, :, 18:19] if crop else sitk.Cast(ct_image > -500, sitk.sitkUInt8)
    volume = _volume_like(scene, class_name, "Not a CT", image)
    counts = _counts(scene)
    assert message in input_problem(volume, points)
    with pytest.raises(VolumeError, match=message):
        logic.classify(volume, points, _options(), classifier=classifier)
    _assert_nothing_written(scene, counts)


def test_default_input_is_the_first_plain_ct_not_a_label_map_or_an_overlay(scene, ct_image, classifier):
    from nadslicer.validation import default_input_volume

    assert default_input_volume(scene) is None
    _volume_like(scene, "vtkMRMLLabelMapVolumeNode", "Segmentation-label", sitk.Cast(ct_image > -500, sitk.sitkUInt8))
    volume, points = _setup(scene, ct_image)
    result = logic.classify(volume, points, _options(saliency=True, show_overlay=False), classifier=classifier)
    scene.RemoveNode(volume)  # only the overlay (a scalar volume) and the label map are left
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is not None
    assert default_input_volume(scene) is None
    ct = add_volume_from_image(scene, ct_image, "CT again")
    assert default_input_volume(scene) is ct
    assert result.saliency_node.GetAttribute("NotADiagnosis.Output") == "saliency"
    old_overlay = add_volume_from_image(scene, ct_image, "Overlay saved by an earlier version")
    old_overlay.SetAttribute("NotADiagnosis.Saliency", "true")
    scene.RemoveNode(ct)
    assert default_input_volume(scene) is None


def test_status_says_the_warnings_that_make_results_unreliable(scene, ct_image, classifier):
    volume, points = _setup(scene, ct_image)
    ct_result = logic.classify(volume, points, _options(), classifier=classifier)
    assert "Hounsfield" not in ct_result.status
    not_ct = add_volume_from_image(scene, sitk.Abs(ct_image) + 10.0, "MR-like")  # no air at -1000 HU
    result = logic.classify(not_ct, points, _options(), classifier=classifier)
    assert "Warning: 3 of 3 result(s) may be unreliable" in result.status
    assert "does not look like a CT in Hounsfield units" in result.status
    for prediction in ct_result.predictions + result.predictions:
        for warning in prediction.warnings:
            assert warning in (ct_result.status + result.status)


def _offset_points(scene, offset_ras):
    return add_points(scene, lps_to_ras(NODULES_LPS) + np.asarray(offset_ras), ["N1", "N2", "N3"])


def test_points_are_classified_at_the_nodules_found_each_found_once(scene, ct_image, classifier, monkeypatch):
    """Measuring finds each nodule once: the classification reuses those centres (the library's own
    search, ``centre_for_classification``, is not run again) and gives what the library gives when it
    centres the points itself; the table keeps the points and the centres used."""
    import notadiagnosis.classifier as library_classifier

    volume = add_volume_from_image(scene, ct_image, "CT")
    points = _offset_points(scene, [1.5, -1.0, 1.0])
    expected = classifier.predict(ct_image, ras_to_lps(lps_to_ras(NODULES_LPS) + [1.5, -1.0, 1.0]), tta=True)

    def searched_again(*_args, **_kwargs):
        raise AssertionError("the nodule was searched for again to be classified")

    monkeypatch.setattr(library_classifier, "centre_for_classification", searched_again)
    result = logic.classify(volume, points, _options(saliency=False, measure=True), classifier=classifier)

    rows = read_results_table(result.table_node)
    assert all(p.centred for p in expected)
    for row, prediction, nodule in zip(rows, expected, result.nodules):
        centre_ras = lps_to_ras(np.asarray(prediction.centre_lps))
        np.testing.assert_allclose([row["Classified R"], row["Classified A"], row["Classified S"]], centre_ras, atol=1e-6)
        np.testing.assert_allclose(lps_to_ras(np.asarray(nodule.segmentation.centre_lps)), centre_ras, atol=1e-6)
        assert row["Probability"] == pytest.approx(prediction.probability, abs=1e-6)
        assert np.linalg.norm(np.subtract([row["Classified R"], row["Classified A"], row["Classified S"]],
                                          [row["R"], row["A"], row["S"]])) > 0.5


def test_classify_at_click_keeps_the_points_as_placed(scene, ct_image, classifier):
    volume = add_volume_from_image(scene, ct_image, "CT")
    points = _offset_points(scene, [1.5, -1.0, 1.0])
    clicks_lps = ras_to_lps(lps_to_ras(NODULES_LPS) + [1.5, -1.0, 1.0])

    result = logic.classify(volume, points, _options(saliency=False, measure=True, at_click=True), classifier=classifier)

    rows = read_results_table(result.table_node)
    expected = classifier.predict(ct_image, clicks_lps, tta=True, at_click=True)
    for row, prediction in zip(rows, expected):
        assert [row["Classified R"], row["Classified A"], row["Classified S"]] == [row["R"], row["A"], row["S"]]
        assert row["Probability"] == pytest.approx(prediction.probability, abs=1e-6)
    assert all(nodule.measurement is not None for nodule in result.nodules)  # still measured
