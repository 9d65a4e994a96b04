"""The module panel's Classify path (NotADiagnosisWidget._classify) outside Slicer: Qt, the progress
dialog and message boxes are replaced by recorders, MRML is slicer-core's. Checks what the user is
shown: a failed package installation is a message and nothing is classified; warnings reach the
status line; an error in the inputs is a message and the scene is left as it was."""
from __future__ import annotations

import types

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML, headless) is needed for the module's tests")

from helpers import add_sphere, make_ct, save_random_model  # noqa: E402
from slicer_support import add_points, load_module_file  # noqa: E402


class _Recorder:
    def __init__(self):
        self.errors = []


@pytest.fixture
def panel(monkeypatch, tmp_path):
    """A widget whose ui is plain attributes, with Slicer's dialogs recorded, and a random test model."""
    import contextlib

    import slicer.util
    from nadslicer import logic as nadlogic
    from notadiagnosis.classifier import Classifier

    classifier = Classifier.load(str(save_random_model(tmp_path, seed=5)), device="cpu")
    monkeypatch.setattr(nadlogic, "get_classifier", lambda model_path=None, device="Auto": classifier)
    module = load_module_file(monkeypatch)
    shown = _Recorder()
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: shown.errors.append(text), raising=False)
    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext, raising=False)
    dialog = types.SimpleNamespace(maximum=0, value=0, labelText="", wasCanceled=False, close=lambda: None)
    monkeypatch.setattr(slicer.util, "createProgressDialog", lambda **kwargs: dialog, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)
    monkeypatch.setitem(__import__("sys").modules, "qt", types.SimpleNamespace(Qt=types.SimpleNamespace(WindowModal=1)))

    widget = module.NotADiagnosisWidget()
    widget.logic = module.NotADiagnosisLogic()
    widget.resourcePath = lambda name: str(tmp_path / name)
    table_view = types.SimpleNamespace(table=None)
    table_view.setMRMLTableNode = lambda node: setattr(table_view, "table", node)
    widget.ui = types.SimpleNamespace(statusLabel=types.SimpleNamespace(text="before"), resultsTableView=table_view)
    return widget, shown


def _inputs(scene, hu_offset=0.0):
    from nadslicer.volumes import add_volume_from_image

    ct = make_ct(size=(90, 90, 40), spacing=(0.8, 0.8, 2.0), origin=(-36.0, -36.0, -40.0), background_hu=-1000.0)
    ct = add_sphere(add_sphere(ct, (0.0, 0.0, 0.0), 30.0, -830.0), (5.0, -4.0, 2.0), 6.0, 30.0)
    if hu_offset:
        ct = sitk.Abs(ct) + hu_offset  # no air at -1000 HU: not a CT in Hounsfield units
    volume = add_volume_from_image(scene, ct, "CT")
    points = add_points(scene, np.array([[-5.0, 4.0, 2.0]]), ["N1"])
    return volume, points


def _parameters(volume, points):
    return types.SimpleNamespace(inputVolume=volume, pointList=points, device="CPU", testTimeAugmentation=True,
                                 computeSaliency=False, resultsTable=None, saliencyVolume=None)


@pytest.mark.parametrize("error", [
    "DependencyError",  # what nadslicer.dependencies raises for the failures it knows
    ModuleNotFoundError("No module named 'light_the_torch._patch'"),  # one it does not foresee
])
def test_failed_installation_is_shown_and_nothing_is_classified(panel, monkeypatch, error):
    from nadslicer.errors import DependencyError

    if error == "DependencyError":
        error = DependencyError("Installing safetensors failed (CalledProcessError: ...); check the network connection.")
    widget, shown = panel
    volume, points = _inputs(slicer.mrmlScene)
    widget._parameterNode = _parameters(volume, points)

    def fail(requirementsPath=None):
        raise error

    monkeypatch.setattr(widget.logic, "ensureDependencies", fail)
    widget._classify()
    assert len(shown.errors) == 1 and str(error) in shown.errors[0]
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert widget.ui.statusLabel.text == "before"


def test_warnings_reach_the_status_line(panel, monkeypatch):
    widget, shown = panel
    monkeypatch.setattr(widget.logic, "ensureDependencies", lambda requirementsPath=None: None)
    volume, points = _inputs(slicer.mrmlScene, hu_offset=10.0)
    widget._parameterNode = _parameters(volume, points)
    widget._classify()
    assert shown.errors == []
    assert widget.ui.resultsTableView.table is not None
    assert widget._parameterNode.resultsTable is widget.ui.resultsTableView.table
    assert "1 point(s) classified" in widget.ui.statusLabel.text
    assert "Warning: 1 of 1 result(s) may be unreliable" in widget.ui.statusLabel.text
    assert "Hounsfield" in widget.ui.statusLabel.text


def test_an_input_error_is_a_message_and_the_scene_is_unchanged(panel, monkeypatch):
    widget, shown = panel
    monkeypatch.setattr(widget.logic, "ensureDependencies", lambda requirementsPath=None: None)
    volume, points = _inputs(slicer.mrmlScene)
    points.SetNthControlPointPosition(0, 500.0, 0.0, 0.0)  # outside the CT
    widget._parameterNode = _parameters(volume, points)
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    widget._classify()
    assert len(shown.errors) == 1 and "lies outside the volume 'CT'" in shown.errors[0]
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert widget.ui.statusLabel.text == "before"

