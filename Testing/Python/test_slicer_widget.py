"""The module panel (NotADiagnosisWidget) outside Slicer: Qt, the progress dialog and message boxes are
replaced by recorders, MRML is slicer-core's. Checks what the user is shown and that the window stays
live: a failed or broken installation is one message and nothing is classified (never two dialogs, never
a console traceback), warnings reach the status line, an input error leaves the scene as it was, the
model loads while the window keeps processing events, a late Cancel is not lost, repeated runs replace
their outputs, outputs are hidden from the input selector, the GUI is connected once, the sample loads."""
from __future__ import annotations

import sys
import threading
import time
import types

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML, headless) is needed for the module's tests")

from helpers import add_sphere, make_ct, save_random_model  # noqa: E402
from slicer_support import add_points, load_module_file  # noqa: E402


class _Shown:
    def __init__(self):
        self.errors = []
        self.process_events = 0


class _ProgressDialog:
    """QProgressDialog's behaviour that matters here: with autoReset (Qt's default) reaching the maximum
    resets it, which clears wasCanceled. ``cancel_at`` presses Cancel once the value reaches it."""

    def __init__(self, cancel_at=None):
        self.maximum, self._value, self.labelText = 0, 0, ""
        self.autoReset, self.autoClose = True, True
        self.wasCanceled = False
        self.cancel_at = cancel_at
        self.closed = False

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        self._value = value
        if self.cancel_at is not None and value >= self.cancel_at:
            self.wasCanceled = True
        if self.autoReset and self.maximum and value >= self.maximum:
            self.wasCanceled = False  # QProgressDialog::reset()

    def close(self):
        self.closed = True


class _Proxy:
    def __init__(self):
        self.hiddenNodeIDs = []


@pytest.fixture
def panel(monkeypatch, tmp_path):
    """A widget whose ui is plain attributes, with Slicer's dialogs recorded, and a random test model."""
    import contextlib

    import slicer.util
    from nadslicer import logic as nadlogic
    from notadiagnosis.classifier import Classifier

    classifier = Classifier.load(str(save_random_model(tmp_path, seed=5)), device="cpu")
    monkeypatch.setattr(nadlogic, "get_classifier", lambda model_path=None, device="Auto", expected_sha256="": classifier)
    module = load_module_file(monkeypatch)
    shown = _Shown()
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: shown.errors.append(text), raising=False)
    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext, raising=False)
    dialog = _ProgressDialog()
    monkeypatch.setattr(slicer.util, "createProgressDialog", lambda **kwargs: dialog, raising=False)

    def process_events():
        shown.process_events += 1

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=process_events, testingEnabled=lambda: False),
                        raising=False)
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(Qt=types.SimpleNamespace(WindowModal=1)))

    widget = module.NotADiagnosisWidget()
    widget.logic = module.NotADiagnosisLogic()
    table_view = types.SimpleNamespace(table=None)
    table_view.setMRMLTableNode = lambda node: setattr(table_view, "table", node)
    proxy = _Proxy()
    widget.ui = types.SimpleNamespace(
        statusLabel=types.SimpleNamespace(text="before"), resultsTableView=table_view,
        classifyButton=types.SimpleNamespace(enabled=False, toolTip=""),
        inputVolumeSelector=types.SimpleNamespace(sortFilterProxyModel=lambda: proxy),
    )
    widget.dialog = dialog
    widget.module = module
    return widget, shown


def _inputs(scene, hu_offset=0.0):
    from nadslicer.volumes import add_volume_from_image

    ct = make_ct(size=(90, 90, 40), spacing=(0.8, 0.8, 2.0), origin=(-36.0, -36.0, -40.0), background_hu=-1000.0)
    ct = add_sphere(add_sphere(ct, (0.0, 0.0, 0.0), 30.0, -830.0), (5.0, -4.0, 2.0), 6.0, 30.0)
    if hu_offset:
        ct = sitk.Abs(ct) + hu_offset  # no air at -1000 HU: not a CT in Hounsfield units
    volume = add_volume_from_image(scene, ct, "CT")
    points = add_points(scene, np.array([[-5.0, 4.0, 2.0], [3.0, -2.0, 0.0]]), ["N1", "N2"])
    return volume, points


def _parameters(volume, points, **changes):
    values = dict(inputVolume=volume, pointList=points, device="CPU", testTimeAugmentation=True, computeSaliency=False,
                  measureNodules=False, classifyAtClick=False, useBundledModel=True, modelPath=None, modelSha256="", replacePreviousResults=True,
                  resultsTable=None, saliencyVolume=None, resultPoints=None, nodulesSegmentation=None, refinedCentres=None)
    values.update(changes)
    return types.SimpleNamespace(**values)


def _ready(widget, monkeypatch, **changes):
    monkeypatch.setattr(widget.logic, "ensureDependencies", lambda requirementsPath=None: None)
    volume, points = _inputs(slicer.mrmlScene, hu_offset=changes.pop("hu_offset", 0.0))
    widget._parameterNode = _parameters(volume, points, **changes)
    return volume, points


@pytest.mark.parametrize("error", [
    "DependencyError",  # what nadslicer.dependencies raises for the failures it knows
    ModuleNotFoundError("No module named 'onnxruntime.capi'"),  # one it does not foresee
])
def test_failed_installation_is_shown_once_and_nothing_is_classified(panel, monkeypatch, error):
    from nadslicer.errors import DependencyError

    if error == "DependencyError":
        error = DependencyError("Installing onnxruntime failed (CalledProcessError: ...); check the network connection.")
    widget, shown = panel
    volume, points = _inputs(slicer.mrmlScene)
    widget._parameterNode = _parameters(volume, points)

    def fail(requirementsPath=None):
        raise error

    monkeypatch.setattr(widget.logic, "ensureDependencies", fail)
    widget.onClassifyButton()
    assert len(shown.errors) == 1 and str(error) in shown.errors[0]
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert widget.ui.statusLabel.text == "before"
    assert not widget._running


def test_a_failure_slicer_already_showed_is_not_shown_twice(panel, monkeypatch):
    """Slicer 5.12's pip_ensure shows pip's error in its own dialog: the panel says it in the status line only."""
    import subprocess

    widget, shown = panel
    volume, points = _inputs(slicer.mrmlScene)
    widget._parameterNode = _parameters(volume, points)
    packaging = types.ModuleType("slicer.packaging")

    def pip_ensure(requirements, requester=None):
        raise subprocess.CalledProcessError(1, "pip install")

    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(widget.logic, "ensureDependencies",
                        lambda requirementsPath=None: __import__("nadslicer.dependencies").dependencies.ensure_packages(
                            ["not-installed-pkg-abc>=1"]))
    widget.onClassifyButton()
    assert shown.errors == []
    assert "Installing not-installed-pkg-abc>=1 failed" in widget.ui.statusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


def test_a_runtime_that_is_installed_but_broken_is_a_message(panel, monkeypatch):
    """The first real import of the runtime happens inside the panel's error handling: a dialog, not a console traceback."""
    from nadslicer import dependencies

    widget, shown = panel
    volume, points = _inputs(slicer.mrmlScene)
    widget._parameterNode = _parameters(volume, points)
    real_import = dependencies.importlib.import_module

    def broken(name, *args):
        if name == dependencies.RUNTIME_MODULE:
            raise OSError("libcudnn.so.9: cannot open shared object file")
        return real_import(name, *args)

    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: [])
    monkeypatch.setattr(dependencies.importlib, "import_module", broken)
    widget.onClassifyButton()
    assert len(shown.errors) == 1
    assert "cannot be loaded (OSError: libcudnn.so.9" in shown.errors[0]
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


def test_warnings_reach_the_status_line(panel, monkeypatch):
    widget, shown = panel
    _ready(widget, monkeypatch, hu_offset=10.0)
    widget.onClassifyButton()
    assert shown.errors == []
    assert widget.ui.resultsTableView.table is not None
    assert widget._parameterNode.resultsTable is widget.ui.resultsTableView.table
    assert "2 point(s) classified" in widget.ui.statusLabel.text
    assert "Warning: 2 of 2 result(s) may be unreliable" in widget.ui.statusLabel.text
    assert "Hounsfield" in widget.ui.statusLabel.text


def test_an_input_error_is_a_message_and_the_scene_is_unchanged(panel, monkeypatch):
    widget, shown = panel
    _, points = _ready(widget, monkeypatch)
    points.SetNthControlPointPosition(0, 500.0, 0.0, 0.0)  # outside the CT
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    widget.onClassifyButton()
    assert len(shown.errors) == 1 and "lies outside the volume 'CT'" in shown.errors[0]
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert widget.ui.statusLabel.text == "before"


def test_the_window_processes_events_while_the_model_loads(panel, monkeypatch):
    from nadslicer import logic as nadlogic

    widget, shown = panel
    _ready(widget, monkeypatch)
    loaded = nadlogic.get_classifier()
    loading = threading.Event()
    events_while_loading = []

    def slow_load(model_path=None, device="Auto", expected_sha256=""):
        loading.set()
        time.sleep(0.5)
        loading.clear()
        return loaded

    monkeypatch.setattr(nadlogic, "get_classifier", slow_load)
    monkeypatch.setattr(slicer.app, "processEvents", lambda: events_while_loading.append(loading.is_set()))
    widget.onClassifyButton()
    assert sum(events_while_loading) >= 3  # the window repainted during the half-second load
    assert widget._parameterNode.resultsTable is not None


def test_a_cancel_during_the_last_point_is_not_lost(panel, monkeypatch):
    widget, shown = panel
    _ready(widget, monkeypatch)
    widget.dialog.cancel_at = 2  # pressed as the last of the two points finishes
    counts = slicer.mrmlScene.GetNumberOfNodes()
    widget.onClassifyButton()
    assert widget.ui.statusLabel.text == "Cancelled: no results were kept."
    assert slicer.mrmlScene.GetNumberOfNodes() == counts
    assert shown.errors == [] and widget.dialog.closed


def test_a_second_run_replaces_the_first_and_outputs_are_hidden_from_the_input_selector(panel, monkeypatch):
    widget, shown = panel
    _ready(widget, monkeypatch, computeSaliency=True)
    widget.onClassifyButton()
    first_table = widget._parameterNode.resultsTable
    widget.onClassifyButton()
    assert shown.errors == []
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert first_table.GetScene() is None
    saliency = widget._parameterNode.saliencyVolume
    assert widget.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs == [saliency.GetID()]
    assert widget._parameterNode.resultPoints.GetNumberOfControlPoints() == 2


def test_measured_nodules_reach_the_parameter_node_and_are_replaced(panel, monkeypatch):
    widget, shown = panel
    _ready(widget, monkeypatch, measureNodules=True)
    widget.onClassifyButton()
    first = widget._parameterNode.nodulesSegmentation
    assert shown.errors == [] and first is not None and widget._parameterNode.refinedCentres is not None
    assert "Nodules found and measured" in widget.ui.statusLabel.text
    widget.onClassifyButton()
    assert first.GetScene() is None
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_without_replacing_each_run_adds_its_outputs(panel, monkeypatch):
    widget, shown = panel
    _ready(widget, monkeypatch, replacePreviousResults=False)
    widget.onClassifyButton()
    widget.onClassifyButton()
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 2


class _Slicer58Wrapper:
    """A parameter node wrapper as in Slicer 5.8: connectGui returns None; connections are numbered."""

    live = []

    def __init__(self, mrml_node):
        self.parameterNode = mrml_node
        self._nextParameterGUIsTag = 0
        self._guis = {}

    def connectGui(self, gui):
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._guis[tag] = gui
        _Slicer58Wrapper.live.append((id(self), tag))
        return None

    def disconnectGui(self, tag):
        if tag in self._guis:
            del self._guis[tag]
            _Slicer58Wrapper.live.remove((id(self), tag))

    def AddObserver(self, *args):
        return 1

    def RemoveObserver(self, *args):
        pass

    def __getattr__(self, name):
        if name in ("pointList", "resultsTable"):
            return None
        raise AttributeError(name)


def test_the_gui_is_connected_once_however_often_the_module_is_entered(panel, monkeypatch):
    widget, _ = panel
    _Slicer58Wrapper.live = []
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "NotADiagnosis")
    monkeypatch.setattr(widget, "addObserver", lambda *args: None)
    monkeypatch.setattr(widget, "removeObserver", lambda *args: None)
    monkeypatch.setattr(widget, "_onParameterNodeModified", lambda *args: None)
    for _ in range(4):  # setup(), then entering the module three times: a new wrapper of the same node each time
        widget.setParameterNode(_Slicer58Wrapper(node))
    assert len(_Slicer58Wrapper.live) == 1
    widget.setParameterNode(None)  # the scene closes
    assert _Slicer58Wrapper.live == []


def test_reload_forgets_the_modules_packages():
    from nadslicer.library import forget_packages

    modules = {"nadslicer": 1, "nadslicer.logic": 2, "notadiagnosis": 3, "notadiagnosis.classifier": 4,
               "numpy": 5, "nadslicerish": 6}
    assert forget_packages(modules) == ["nadslicer", "nadslicer.logic", "notadiagnosis", "notadiagnosis.classifier"]
    assert modules == {"numpy": 5, "nadslicerish": 6}


def test_sample_data_is_registered_and_builds_the_synthetic_scene(panel, monkeypatch):
    import slicer.util

    widget, _ = panel
    registered = {}
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kwargs: registered.update(kwargs))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    shown_layers = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kwargs: shown_layers.append(kwargs), raising=False)
    widget.module.registerSampleData()
    assert registered["category"] == "Not a Diagnosis" and registered["uris"] == []
    volume, points = registered["customDownloader"](types.SimpleNamespace(sampleName=registered["sampleName"]))
    assert volume.GetScene() is slicer.mrmlScene and points.GetNumberOfControlPoints() == 4
    assert shown_layers and shown_layers[0]["background"] is volume
    from nadslicer.validation import input_problem

    assert input_problem(volume, points) is None
