"""Not a Diagnosis — 3D Slicer module: lung nodule malignancy second opinion for research.

Module, Widget, Logic and Test in one file, as Slicer's scripted-module template lays them out. The
computation lives in the Qt-free package ``nadslicer`` (tested in CI on real MRML with slicer-core)
and in the library ``notadiagnosis``; both are imported inside functions so that loading this module
at Slicer start-up costs nothing (no numpy, SimpleITK or torch at file scope). The one exception is
``nadslicer.devices``, which imports only the standard library and states the panel's Device choices.

Target: Slicer 5.8 and later. Python packages (one list, ``Resources/requirements.txt``) are installed
at first use with ``slicer.packaging.pip_ensure`` on Slicer 5.12+ or, before 5.12, with
``slicer.util.pip_install`` behind a confirmation dialog; never in testing mode. The slow work runs
on a worker thread while the window stays live (see ``nadslicer.background``).
"""
import contextlib
import logging
import os
import pathlib
from typing import Annotated, Optional

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Markups node classes are added to the `slicer` namespace when the Markups module loads, possibly
# after this file is executed; the parameter node's annotations need the class now, so it is imported
# from the Python package that wraps Markups' MRML classes (it is what `slicer` re-exports).
from vtkSlicerMarkupsModuleMRMLPython import vtkMRMLMarkupsFiducialNode
from vtkSlicerSegmentationsModuleMRMLPython import vtkMRMLSegmentationNode

# The panel's Device choices, stated once in the logic package (its devices file imports nothing heavy).
from nadslicer.devices import DEVICE_CHOICES

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

#
# NotADiagnosis
#


class NotADiagnosis(ScriptedLoadableModule):
    """Module description shown in Slicer's module selector and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Not a Diagnosis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        # Markups and Segmentations: the nodule points and segmentations, and their node classes, which the
        # parameter node uses.
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["Not-a-Diagnosis contributors"]
        self.parent.helpText = _(
            "<p><b>Not a diagnosis.</b> Research software: a second opinion on lung nodules for research only. "
            "It has not been validated on patients and must not be used for diagnosis or treatment decisions.</p>"
            "<p>Load a chest CT, place a point on each nodule, press <b>Classify</b>. For every point a 3D ResNet "
            "looks at the 64 mm cube around it (64<sup>3</sup> voxels at 1 mm, patient-aligned) and gives the "
            "probability that LIDC-IDRI radiologists would rate the nodule malignant (median rating 4-5 versus 1-2), "
            "with an uncertainty from flip test-time augmentation and warnings when the result may be unreliable. "
            "The saliency overlay shows which voxels drove the model's output; it is not a segmentation.</p>"
            "<p>Results go into a table (clicking a row centres the slice views on that point) and a results point "
            "list whose labels carry the probabilities, in a folder beside the CT; a new run replaces them unless "
            "you untick that option. The input volume and point list are never modified. No CT at hand? "
            "<b>Load sample</b> adds a synthetic chest CT with points on its nodules (also in Sample Data).</p>"
            "<p>If you use this module, cite the LIDC-IDRI data set it was trained on: "
            "Armato SG III, McLennan G, Bidaut L, et al. The Lung Image Database Consortium (LIDC) and Image Database "
            "Resource Initiative (IDRI): a completed reference database of lung nodules on CT scans. "
            "Med Phys. 2011;38(2):915-931, doi:10.1118/1.3528204; the data: Armato SG III et al., Data from LIDC-IDRI, "
            "The Cancer Imaging Archive, doi:10.7937/K9/TCIA.2015.LO9QL9SX; and TCIA: Clark K et al., J Digit Imaging. "
            "2013;26(6):1045-1057.</p>"
        )
        self.parent.acknowledgementText = _(
            "Developed by the Not-a-Diagnosis contributors (Apache-2.0). The authors acknowledge the National Cancer "
            "Institute and the Foundation for the National Institutes of Health, and their critical role in the "
            "creation of the free publicly available LIDC/IDRI Database used to train the model."
        )
        # The library bundled beside this file wins over any other copy in Slicer's Python.
        from nadslicer.library import prefer_bundled_library

        prefer_bundled_library(MODULE_DIR)
        app = getattr(slicer, "app", None)
        if app is not None:
            # Sample Data lists the module's sample once Slicer has started (SampleData is loaded by then).
            app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the synthetic chest CT with its nodule points in Slicer's Sample Data module (generated here, no download)."""
    import SampleData

    from nadslicer.sample_data import CATEGORY, SAMPLE_NAME

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=[], fileNames=[], nodeNames=[],  # nothing to download: customDownloader builds the scene
        thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "NotADiagnosis.png"),
        customDownloader=loadSyntheticSample,
    )


def loadSyntheticSample(source=None):
    """Add the synthetic chest CT and its nodule points to the scene and show them; returns [volume, points]."""
    from nadslicer.sample_data import load_sample

    with slicer.util.WaitCursor():
        volumeNode, pointList, _nodules = load_sample(slicer.mrmlScene)
    slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
    return [volumeNode, pointList]


#
# NotADiagnosisParameterNode
#


@parameterNodeWrapper
class NotADiagnosisParameterNode:
    """The module's choices, saved with the scene.

    inputVolume - the chest CT.
    pointList - one control point per nodule.
    device - where the model runs: Auto (an NVIDIA GPU if a runtime provides one, else CPU), CPU or GPU.
    testTimeAugmentation - average over flips and report their spread as uncertainty.
    computeSaliency - also compute the saliency overlay.
    measureNodules - find, segment and measure the nodule at each point (segmentation, refined centres,
      measurement columns).
    classifyAtClick - classify at the points as placed instead of at the centres of the nodules found near them.
    useBundledModel - the model shipped with the extension; otherwise modelPath (an exported model's .onnx file
      or .json card, the export's other files beside it).
    modelSha256 - optional pinned sha256 of the model file; loading refuses any other file.
    replacePreviousResults - a new run removes the previous run's outputs (so they do not pile up).
    resultsTable, saliencyVolume, resultPoints, nodulesSegmentation, refinedCentres - the latest run's outputs.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    pointList: vtkMRMLMarkupsFiducialNode
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "Auto"
    testTimeAugmentation: bool = True
    computeSaliency: bool = True
    measureNodules: bool = True
    classifyAtClick: bool = False
    useBundledModel: bool = True
    modelPath: pathlib.Path
    modelSha256: str = ""
    replacePreviousResults: bool = True
    resultsTable: vtkMRMLTableNode
    saliencyVolume: vtkMRMLScalarVolumeNode
    resultPoints: vtkMRMLMarkupsFiducialNode
    nodulesSegmentation: vtkMRMLSegmentationNode
    refinedCentres: vtkMRMLMarkupsFiducialNode


#
# NotADiagnosisWidget
#


class NotADiagnosisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, model, options, Classify, results. It holds no computation."""

    # Point list events after which Classify may become enabled or disabled.
    _POINT_EVENTS = (
        "PointAddedEvent",
        "PointRemovedEvent",
        "PointPositionDefinedEvent",
        "PointPositionUndefinedEvent",
    )

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPointList = None
        self._running = False
        self._modelInfoKey = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NotADiagnosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NotADiagnosisLogic()

        self.ui.placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        from nadslicer.library import library_in_use
        from nadslicer.model_info import bundled_model_summary, library_disclaimer

        # The library's wording; without the library the .ui's own short statement stays (and the status says why).
        self.ui.disclaimerLabel.text = library_disclaimer() or self.ui.disclaimerLabel.text
        self.ui.statusLabel.text = bundled_model_summary()
        self.ui.statusLabel.toolTip = library_in_use(MODULE_DIR)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for event in (slicer.mrmlScene.NodeAddedEvent, slicer.mrmlScene.EndImportEvent):
            self.addObserver(slicer.mrmlScene, event, self._hideOutputsFromInputSelector)

        self.ui.classifyButton.connect("clicked(bool)", self.onClassifyButton)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSampleButton)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onResultRowClicked)

        # Connected once here and kept while the panel is hidden: Slicer 5.8's connectGui returns no tag,
        # so connecting on every module entry would pile up connections that disconnectGui cannot undo.
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self.setParameterNode(None)

    def enter(self) -> None:
        self.initializeParameterNode()  # reconnects nothing when the parameter node is the same

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()  # otherwise enter() does it

    def initializeParameterNode(self) -> None:
        from nadslicer.validation import default_input_volume

        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # Not GetFirstNodeByClass: it also returns label maps and the module's own outputs.
            firstVolumeNode = default_input_volume(slicer.mrmlScene)
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[NotADiagnosisParameterNode]) -> None:
        """Bind the GUI to ``inputParameterNode``; nothing happens when it wraps the node already bound."""
        current = self._parameterNode.parameterNode if self._parameterNode else None
        incoming = inputParameterNode.parameterNode if inputParameterNode else None
        if current is not None and incoming is current:
            self._onParameterNodeModified()
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with the dynamic property "SlicerParameterName" in the .ui are bound to parameters.
            self._parameterNodeGuiTag = self._connectGui(self._parameterNode)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _connectGui(self, parameterNode):
        tag = parameterNode.connectGui(self.ui)
        if tag is None:
            # Slicer before 5.12 returns no tag; the wrapper numbers its GUI connections, and this one is
            # the last. With it disconnectGui can undo this connection when the scene closes.
            tag = getattr(parameterNode, "_nextParameterGUIsTag", 1) - 1
        return tag

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameterNode = self._parameterNode
        pointList = parameterNode.pointList if parameterNode else None
        self._observePointList(pointList)
        self.ui.placeWidget.setCurrentNode(pointList)
        resultsTable = parameterNode.resultsTable if parameterNode else None
        if self.ui.resultsTableView.mrmlTableNode() is not resultsTable:
            self.ui.resultsTableView.setMRMLTableNode(resultsTable)
        if parameterNode:
            self.ui.modelPathLineEdit.enabled = not parameterNode.useBundledModel
            self._updateModelInfo()
        self._updateClassifyButton()

    def _updateModelInfo(self) -> None:
        """Name, version and sha256 of the chosen model, recomputed only when the choice changes."""
        from nadslicer.model_info import model_summary
        from nadslicer.validation import model_problem

        parameterNode = self._parameterNode
        modelPath = None if parameterNode.useBundledModel else str(parameterNode.modelPath)
        if modelPath == self._modelInfoKey and self._modelInfoKey is not None:
            return
        self._modelInfoKey = modelPath
        problem = model_problem(parameterNode.useBundledModel, modelPath)
        self.ui.modelInfoLabel.text = problem or model_summary(modelPath)

    def _observePointList(self, pointList) -> None:
        """Watch the selected point list so that Classify follows points being placed or deleted."""
        if pointList is self._observedPointList:
            return
        if self._observedPointList is not None:
            for eventName in self._POINT_EVENTS:
                self.removeObserver(self._observedPointList, getattr(slicer.vtkMRMLMarkupsNode, eventName), self._updateClassifyButton)
        self._observedPointList = pointList
        if pointList is not None:
            for eventName in self._POINT_EVENTS:
                self.addObserver(pointList, getattr(slicer.vtkMRMLMarkupsNode, eventName), self._updateClassifyButton)

    def _hideOutputsFromInputSelector(self, caller=None, event=None) -> None:
        """The module's outputs (saliency overlays) are volumes too; the Chest CT selector must not offer them."""
        from nadslicer.validation import output_volume_ids

        self.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = output_volume_ids(slicer.mrmlScene)

    def _updateClassifyButton(self, caller=None, event=None) -> None:
        from nadslicer.validation import input_problem, model_problem

        parameterNode = self._parameterNode
        if parameterNode is None:
            problem = _("Set up the module first.")
        else:
            problem = input_problem(parameterNode.inputVolume, parameterNode.pointList) or model_problem(
                parameterNode.useBundledModel, None if parameterNode.useBundledModel else str(parameterNode.modelPath))
        if self._running:
            problem = _("A classification is running.")
        self.ui.classifyButton.enabled = problem is None
        self.ui.classifyButton.toolTip = problem or _("Classify every placed point (research use only, not a diagnosis).")

    @contextlib.contextmanager
    def _reportingErrors(self):
        """Show what went wrong, once, where the user looks; yields a holder whose ``action`` names the step.

        Cancel: the status line says nothing was kept. A failure Slicer already showed in its own
        dialog (a pip error on 5.12+): the status line only. An error the user can fix: its sentence.
        Anything else: a message with the traceback as details, never a silent console traceback.
        """
        import traceback
        import types

        from nadslicer.errors import CancelledError, DependencyError, NotADiagnosisError

        step = types.SimpleNamespace(action=_("Classification"))
        try:
            yield step
        except CancelledError:
            self.ui.statusLabel.text = _("Cancelled: no results were kept.")
        except DependencyError as error:
            if error.already_shown:
                self.ui.statusLabel.text = str(error)
            else:
                slicer.util.errorDisplay(str(error), windowTitle=_("Not a Diagnosis"))
        except NotADiagnosisError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Not a Diagnosis"))
        except Exception as error:  # a failure nobody foresaw: say so, never a silent traceback
            logging.exception("Not a Diagnosis: %s failed", step.action)
            slicer.util.errorDisplay(
                _("{action} failed: {error}").format(action=step.action, error=error),
                windowTitle=_("Not a Diagnosis"), detailedText=traceback.format_exc(),
            )

    def onLoadSampleButton(self) -> None:
        """Load the synthetic chest CT with its nodule points and select them."""
        with self._reportingErrors() as step:
            step.action = _("Loading the sample")
            volumeNode, pointList = loadSyntheticSample()
            self._parameterNode.inputVolume = volumeNode
            self._parameterNode.pointList = pointList

    def onClassifyButton(self) -> None:
        """Install what is missing (first use), classify with progress and cancel, show the results."""
        if self._running or self._parameterNode is None:
            return
        self._running = True
        self._updateClassifyButton()
        try:
            with self._reportingErrors() as step:
                self._classify(step)
        finally:
            self._running = False
            self._updateClassifyButton()

    def _classify(self, step) -> None:
        import qt

        from nadslicer.background import run_in_background
        from nadslicer.logic import ClassificationOptions, Job, compute, prepare, write
        from nadslicer.results import OutputNodes

        parameterNode = self._parameterNode
        step.action = _("Installing the Python packages")
        # No wait cursor here: the installer's confirmation dialog must look clickable.
        self.logic.ensureDependencies()
        step.action = _("Classification")
        options = ClassificationOptions(
            device=parameterNode.device,
            tta=parameterNode.testTimeAugmentation,
            saliency=parameterNode.computeSaliency,
            measure=parameterNode.measureNodules,
            at_click=parameterNode.classifyAtClick,
            model_path=None if parameterNode.useBundledModel else str(parameterNode.modelPath),
            expected_sha256=parameterNode.modelSha256.strip(),
        )
        prepared = prepare(parameterNode.inputVolume, parameterNode.pointList)
        job = Job()
        # Window-modal: the inputs cannot be changed under the running classification, Cancel stays clickable.
        progressDialog = slicer.util.createProgressDialog(
            labelText=_("Loading the model..."), maximum=0, windowTitle=_("Not a Diagnosis"),
            windowModality=qt.Qt.WindowModal,
        )
        # Never reset on the last step: a reset would forget a Cancel pressed just before it.
        progressDialog.autoReset = False
        progressDialog.autoClose = False
        try:
            computed = run_in_background(lambda: compute(prepared, options, job),
                                         wait=lambda: self._showProgress(progressDialog, job))
            self._showProgress(progressDialog, job)
            job.check()  # a Cancel pressed during the last point still counts
        finally:
            progressDialog.close()

        previous = None
        if parameterNode.replacePreviousResults:
            previous = OutputNodes(parameterNode.resultsTable, parameterNode.saliencyVolume, parameterNode.resultPoints,
                                   parameterNode.nodulesSegmentation, parameterNode.refinedCentres)
        result = write(prepared, computed, options, previous)
        parameterNode.resultsTable = result.table_node
        parameterNode.saliencyVolume = result.saliency_node
        parameterNode.resultPoints = result.points_node
        parameterNode.nodulesSegmentation = result.segmentation_node
        parameterNode.refinedCentres = result.centres_node
        self.ui.resultsTableView.setMRMLTableNode(result.table_node)
        self._hideOutputsFromInputSelector()
        self.ui.statusLabel.text = result.status

    def _showProgress(self, progressDialog, job) -> None:
        """Main thread, while the worker computes: show the job's progress, pass a Cancel on, keep the window live."""
        done, total, message = job.snapshot()
        if total > 0:
            progressDialog.maximum = total
            progressDialog.value = done
        progressDialog.labelText = message or progressDialog.labelText
        slicer.app.processEvents()
        if progressDialog.wasCanceled:
            job.cancel()

    def onResultRowClicked(self, index) -> None:
        """Centre the slice views on the clicked result's point."""
        from nadslicer.results import center_slice_views, row_position_ras

        tableNode = self.ui.resultsTableView.mrmlTableNode()
        if tableNode is None or not index.isValid():
            return
        proxy = self.ui.resultsTableView.sortFilterProxyModel()
        row = proxy.mapToSource(index).row() if proxy is not None else index.row()
        position = row_position_ras(tableNode, row)
        if position is not None:
            center_slice_views(slicer.mrmlScene, position)

    def onReload(self) -> None:
        """Reload also the module's packages (nadslicer, notadiagnosis), not only this file."""
        import sys

        from nadslicer.library import forget_packages

        forget_packages(sys.modules)
        ScriptedLoadableModuleWidget.onReload(self)


#
# NotADiagnosisLogic
#


class NotADiagnosisLogic(ScriptedLoadableModuleLogic):
    """Entry point for scripts and the self-test; the work is done by ``nadslicer`` (Qt-free).

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("NotADiagnosis")
        result = logic.classify(getNode("CT"), getNode("Nodules"))
        print(slicer.util.dataframeFromTable(result.table_node))  # needs pandas
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return NotADiagnosisParameterNode(super().getParameterNode())

    def ensureDependencies(self, requirementsPath: Optional[str] = None) -> None:
        """Install the missing packages of ``Resources/requirements.txt`` (asking first), then import the runtime.

        Raises ``nadslicer.errors.DependencyError`` (``DependenciesMissingInTesting`` in testing mode,
        where nothing is installed).
        """
        from nadslicer.dependencies import REQUIREMENTS_FILE, ensure_dependencies

        ensure_dependencies(requirementsPath or os.path.join(MODULE_DIR, REQUIREMENTS_FILE))

    def classify(
        self,
        volumeNode,
        pointListNode,
        device: str = "Auto",
        tta: bool = True,
        saliency: bool = True,
        modelPath: Optional[str] = None,
        progress=None,
        classifier=None,
        modelSha256: str = "",
        previous=None,
        measure: bool = True,
        atClick: bool = False,
    ):
        """Classify every placed point (synchronously); returns ``nadslicer.logic.ClassificationResult``.

        Each point is classified at the centre of the nodule found near it, or at the point itself with
        ``atClick``. ``previous``: an earlier result's ``outputs``, removed once the new ones are written.
        """
        from nadslicer.logic import ClassificationOptions, classify

        options = ClassificationOptions(device=device, tta=tta, saliency=saliency, model_path=modelPath,
                                        expected_sha256=modelSha256, measure=measure, at_click=atClick)
        return classify(volumeNode, pointListNode, options, progress=progress, classifier=classifier, previous=previous)


#
# NotADiagnosisTest
#


class NotADiagnosisTest(ScriptedLoadableModuleTest):
    """Self-test: the module's sample (the library's synthetic chest CT, points on its nodules), the default model.

    Run by Slicer's test harness in testing mode, where nothing is installed: when the Python packages
    the classifier needs are missing, the tests that need them are skipped with the list (install them
    first to run those); the others run anyway.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_NotADiagnosis_classifies_synthetic_nodules()
        self.setUp()
        self.test_NotADiagnosis_refuses_bad_inputs()
        self.setUp()
        self.test_NotADiagnosis_widget_enables_classify()

    # Helpers (their names hold no "t-e-s-t", which ScriptedLoadableModuleTest would run as tests).

    def _requireRuntime(self):
        """The classifier's packages, installed when allowed; in testing mode, a skip if they are missing."""
        from nadslicer.errors import DependenciesMissingInTesting

        try:
            NotADiagnosisLogic().ensureDependencies()
        except DependenciesMissingInTesting as error:
            self.skipTest(str(error))

    def _syntheticScene(self):
        from nadslicer.sample_data import load_sample

        return load_sample(slicer.mrmlScene)

    @staticmethod
    def _snapshot(volumeNode, pointList):
        import numpy as np

        from nadslicer.volumes import ijk_to_ras

        positions = []
        for index in range(pointList.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            pointList.GetNthControlPointPosition(index, position)
            positions.append(position)
        return (
            np.array(slicer.util.arrayFromVolume(volumeNode), copy=True),
            ijk_to_ras(volumeNode),
            np.array(positions),
            volumeNode.GetTransformNodeID(),
            pointList.GetTransformNodeID(),
        )

    def _assertUnchanged(self, before, after):
        import numpy as np

        self.assertTrue(np.array_equal(before[0], after[0]), "the input volume's voxels changed")
        self.assertTrue(np.array_equal(before[1], after[1]), "the input volume's geometry changed")
        self.assertTrue(np.array_equal(before[2], after[2]), "the control points moved")
        self.assertEqual(before[3:], after[3:], "a parent transform changed")

    def test_NotADiagnosis_classifies_synthetic_nodules(self):
        import math

        from nadslicer.results import read_results_table

        self.delayDisplay("Building the synthetic chest CT")
        self._requireRuntime()
        volumeNode, pointList, nodules = self._syntheticScene()
        before = self._snapshot(volumeNode, pointList)
        logic = NotADiagnosisLogic()

        self.delayDisplay("Classifying")
        result = logic.classify(volumeNode, pointList, device="Auto", tta=True, saliency=True)

        rows = read_results_table(result.table_node)
        self.assertEqual([row["Point"] for row in rows], [nodule["name"] for nodule in nodules])
        for row, nodule in zip(rows, nodules):
            lps = nodule["center_lps"]
            self.assertAlmostEqual(row["R"], -lps[0], places=4)
            self.assertAlmostEqual(row["A"], -lps[1], places=4)
            self.assertAlmostEqual(row["S"], lps[2], places=4)
            self.assertTrue(0.0 <= row["Probability"] <= 1.0)
            self.assertTrue(math.isfinite(row["Uncertainty"]) and row["Uncertainty"] >= 0.0)
            # Classified at the centre of the nodule found near the point (within the 10 mm search radius).
            shift = math.dist([row["Classified R"], row["Classified A"], row["Classified S"]], [row["R"], row["A"], row["S"]])
            self.assertLess(shift, 10.0)
        self.assertIsNotNone(result.saliency_node)
        saliency = slicer.util.arrayFromVolume(result.saliency_node)
        self.assertGreaterEqual(float(saliency.min()), 0.0)
        self.assertLessEqual(float(saliency.max()), 1.0)
        self.assertGreater(float(saliency.max()), 0.0)
        self.assertIn("Model", result.status)
        labels = [result.points_node.GetNthControlPointLabel(index) for index in range(len(nodules))]
        self.assertEqual(labels[0].split(":")[0], nodules[0]["name"])
        # Measured: a segment per found nodule, named after its point, and the refined centres beside it.
        self.assertIsNotNone(result.segmentation_node)
        segmentation = result.segmentation_node.GetSegmentation()
        segmentNames = [segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())]
        self.assertTrue(set(segmentNames) <= {nodule["name"] for nodule in nodules} and segmentNames)
        self.assertEqual(result.centres_node.GetNumberOfControlPoints(), len(segmentNames))
        for row in rows:
            self.assertIn("Long axis", row)
        self._assertUnchanged(before, self._snapshot(volumeNode, pointList))
        self.delayDisplay("Classification test passed")

    def test_NotADiagnosis_refuses_bad_inputs(self):
        import numpy as np
        from vtk.util.numpy_support import vtk_to_numpy

        from nadslicer.errors import NoPointsError, NonLinearTransformError, PointOutsideVolumeError

        self._requireRuntime()
        volumeNode, pointList, _nodules = self._syntheticScene()
        logic = NotADiagnosisLogic()
        tablesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode")

        emptyList = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Empty")
        with self.assertRaises(NoPointsError):
            logic.classify(volumeNode, emptyList, saliency=False)

        outside = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Outside")
        outside.AddControlPoint(0.0, 0.0, 5000.0, "far away")
        with self.assertRaises(PointOutsideVolumeError):
            logic.classify(volumeNode, outside, saliency=False)

        gridTransformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Warp")
        displacement = vtk.vtkImageData()
        displacement.SetDimensions(4, 4, 4)
        displacement.SetSpacing(100.0, 100.0, 100.0)
        displacement.SetOrigin(-150.0, -150.0, -150.0)
        displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
        vectors = vtk_to_numpy(displacement.GetPointData().GetScalars())
        vectors[:] = np.random.default_rng(0).normal(0.0, 2.0, vectors.shape)
        grid = slicer.vtkOrientedGridTransform()
        grid.SetDisplacementGridData(displacement)
        gridTransformNode.SetAndObserveTransformFromParent(grid)
        volumeNode.SetAndObserveTransformNodeID(gridTransformNode.GetID())
        with self.assertRaises(NonLinearTransformError):
            logic.classify(volumeNode, pointList, saliency=False)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode"), tablesBefore)
        self.delayDisplay("Bad-input test passed")

    def test_NotADiagnosis_widget_enables_classify(self):
        slicer.util.selectModule("NotADiagnosis")
        widget = slicer.util.getModuleWidget("NotADiagnosis")
        widget.initializeParameterNode()
        widget.onLoadSampleButton()  # the sample, as a new user gets it
        parameterNode = widget._parameterNode
        volumeNode, pointList = parameterNode.inputVolume, parameterNode.pointList
        self.assertIsNotNone(volumeNode)
        self.assertGreater(pointList.GetNumberOfControlPoints(), 0)
        self.assertTrue(widget.ui.classifyButton.enabled)
        parameterNode.pointList = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "No points yet")
        self.assertFalse(widget.ui.classifyButton.enabled)
        parameterNode.pointList = pointList
        self.assertTrue(widget.ui.classifyButton.enabled)
        parameterNode.useBundledModel = False
        parameterNode.modelPath = pathlib.Path(MODULE_DIR) / "no-such-model.safetensors"
        self.assertFalse(widget.ui.classifyButton.enabled)
        parameterNode.useBundledModel = True
        self.assertTrue(widget.ui.classifyButton.enabled)
        self.delayDisplay("Widget test passed")
