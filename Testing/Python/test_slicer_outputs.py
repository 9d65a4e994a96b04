"""Where the module's results show, on slicer-core's real MRML: a results point list whose labels carry
the probabilities, outputs beside the CT in the subject hierarchy, repeated runs that replace rather
than pile up, outputs never offered as inputs, the saliency overlay rendered by Slicer's own display
pipeline as intended, and the device choice (Auto never picks Apple MPS)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML, headless) is needed for the module's tests")

from helpers import add_sphere, make_ct, save_random_model  # noqa: E402
from slicer_support import add_points  # noqa: E402

from nadslicer import devices, logic  # noqa: E402
from nadslicer.errors import InputError  # noqa: E402
from nadslicer.results import (  # noqa: E402
    SALIENCY_DISPLAY_THRESHOLD,
    SALIENCY_LAYER_OPACITY,
    SUBJECT_HIERARCHY_FOLDER,
    OutputNodes,
    read_results_table,
    rendered_layer,
)
from nadslicer.validation import output_volume_ids  # noqa: E402
from nadslicer.volumes import add_volume_from_image  # noqa: E402


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from notadiagnosis.classifier import Classifier

    return Classifier.load(str(save_random_model(tmp_path_factory.mktemp("model"), seed=4)), device="cpu")


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _inputs(scene):
    ct = make_ct(size=(80, 80, 30), spacing=(0.9, 0.9, 2.0), origin=(-36.0, -36.0, -30.0), background_hu=-1000.0)
    ct = add_sphere(add_sphere(ct, (0.0, 0.0, 0.0), 28.0, -830.0), (4.0, -3.0, 2.0), 6.0, 40.0)
    volume = add_volume_from_image(scene, ct, "CT")
    points = add_points(scene, np.array([[-4.0, 3.0, 2.0], [8.0, 8.0, -4.0]]), ["N1", "N2"])
    return volume, points


def _options(**kwargs):
    # Measuring is covered by test_slicer_measurements.py; these tests look at the classification.
    return logic.ClassificationOptions(device="CPU", **{"measure": False, **kwargs})


def test_result_points_carry_the_probabilities_and_the_users_points_stay(scene, classifier):
    volume, points = _inputs(scene)
    result = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
    node = result.points_node
    assert node is not None and node is not points and node.GetLocked()
    rows = read_results_table(result.table_node)
    assert node.GetNumberOfControlPoints() == 2
    for index, row in enumerate(rows):
        label = node.GetNthControlPointLabel(index)
        assert label.startswith(f"{row['Point']}: {row['Probability']:.2f}")
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        np.testing.assert_allclose(position, [row["R"], row["A"], row["S"]], atol=1e-9)
    assert [points.GetNthControlPointLabel(i) for i in range(2)] == ["N1", "N2"]
    assert result.table_node.GetNodeReference("points") is node


def test_outputs_are_placed_beside_the_ct_in_its_study(scene, classifier):
    volume, points = _inputs(scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "Study")
    hierarchy.CreateItem(study, volume)
    result = logic.classify(volume, points, _options(saliency=True, show_overlay=False), classifier=classifier)
    folder = hierarchy.GetItemChildWithName(study, SUBJECT_HIERARCHY_FOLDER)
    assert folder
    for node in (result.table_node, result.points_node, result.saliency_node):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == folder
    again = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(again.table_node)) == folder  # one folder, reused


def test_a_repeated_run_replaces_the_previous_outputs(scene, classifier):
    volume, points = _inputs(scene)
    first = logic.classify(volume, points, _options(saliency=True, show_overlay=False), classifier=classifier)
    counts = {name: scene.GetNumberOfNodesByClass(name)
              for name in ("vtkMRMLTableNode", "vtkMRMLScalarVolumeNode", "vtkMRMLMarkupsFiducialNode")}
    second = logic.classify(volume, points, _options(saliency=True, show_overlay=False), classifier=classifier,
                            previous=first.outputs)
    assert {name: scene.GetNumberOfNodesByClass(name) for name in counts} == counts
    assert first.table_node.GetScene() is None and first.saliency_node.GetScene() is None
    assert second.table_node.GetScene() is scene
    assert read_results_table(first.table_node) == read_results_table(second.table_node)


def test_replacing_never_removes_a_node_the_module_did_not_create(scene, classifier):
    volume, points = _inputs(scene)
    first = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
    logic.classify(volume, points, _options(saliency=False), classifier=classifier,
                   previous=OutputNodes(table_node=first.table_node, points_node=points, saliency_node=volume))
    assert volume.GetScene() is scene and points.GetScene() is scene
    assert first.table_node.GetScene() is None


def test_a_failed_run_keeps_the_previous_outputs(scene, classifier):
    volume, points = _inputs(scene)
    first = logic.classify(volume, points, _options(saliency=False), classifier=classifier)
    points.SetNthControlPointPosition(0, 900.0, 0.0, 0.0)
    with pytest.raises(InputError):
        logic.classify(volume, points, _options(saliency=False), classifier=classifier, previous=first.outputs)
    assert first.table_node.GetScene() is scene and first.points_node.GetScene() is scene


def test_output_volumes_are_listed_for_the_input_selector_to_hide(scene, classifier):
    volume, points = _inputs(scene)
    result = logic.classify(volume, points, _options(saliency=True, show_overlay=False), classifier=classifier)
    assert output_volume_ids(scene) == [result.saliency_node.GetID()]


def test_saliency_is_rendered_by_slicer_as_its_colour_table_says(scene, classifier):
    """Slicer's display pipeline turns a colour table's alpha into opaque/transparent; the overlay's
    colour table must therefore promise no graded transparency: what is rendered is the table."""
    volume, points = _inputs(scene)
    result = logic.classify(volume, points, _options(saliency=True), classifier=classifier)
    saliency = slicer.util.arrayFromVolume(result.saliency_node)
    rendered = rendered_layer(result.saliency_node)
    colors = result.saliency_node.GetDisplayNode().GetColorNode()
    visible = saliency >= SALIENCY_DISPLAY_THRESHOLD + 0.01
    hidden = saliency < SALIENCY_DISPLAY_THRESHOLD - 0.01
    assert visible.sum() > 100 and hidden.sum() > 100
    assert np.all(rendered[hidden][:, 3] == 0)
    assert np.all(rendered[visible][:, 3] == 255)
    count = colors.GetNumberOfColors()
    table = np.array([colors.GetLookupTable().GetTableValue(i) for i in range(count)])
    indices = np.clip(np.round(saliency[visible] * (count - 1)).astype(int), 0, count - 1)
    np.testing.assert_allclose(rendered[visible][:, :3] / 255.0, table[indices, :3], atol=2.5 / 255)
    np.testing.assert_allclose(rendered[visible][:, 3] / 255.0, table[indices, 3], atol=1e-9)
    # Graded by colour: brightness rises with saliency.
    brightness = rendered[visible][:, :3].astype(float).sum(axis=1)
    assert np.corrcoef(saliency[visible], brightness)[0, 1] > 0.9
    assert 0.0 < SALIENCY_LAYER_OPACITY < 1.0


def _fake_module(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _fake_torch(cuda: bool, mps: bool):
    return _fake_module(
        "torch",
        cuda=types.SimpleNamespace(is_available=lambda: cuda, get_device_name=lambda index=0: "Fake GPU"),
        backends=types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps)),
    )


@pytest.mark.parametrize("providers, torch_cuda, runtime, device", [
    (["CPUExecutionProvider"], False, "auto", "cpu"),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], False, "onnx", "cuda"),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], True, "onnx", "cuda"),
    (["CoreMLExecutionProvider", "CPUExecutionProvider"], False, "auto", "cpu"),
    (["CPUExecutionProvider"], True, "torch", "cuda"),
])
def test_auto_uses_an_nvidia_gpu_when_a_runtime_provides_one_and_never_mps(monkeypatch, providers, torch_cuda, runtime, device):
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_module("onnxruntime", get_available_providers=lambda: providers))
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=torch_cuda, mps=True))
    placement = devices.placement_for("Auto")
    assert (placement.runtime, placement.device) == (runtime, device)
    assert devices.placement_for("CPU") == devices.CPU
    description = devices.gpu_description()
    assert (description is None) == (device == "cpu")
    if runtime == "onnx":
        assert "ONNX Runtime" in description
    elif runtime == "torch":
        assert "torch (Fake GPU)" in description


def test_gpu_without_one_is_refused_in_the_panels_words(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=False, mps=True))
    with pytest.raises(InputError, match="choose Device: Auto or CPU"):
        devices.device_name("GPU")
    with pytest.raises(InputError, match="Unknown device"):
        devices.device_name("MPS")
