"""Not a Diagnosis — 3D Slicer module: lung nodule malignancy second opinion for research.

Module, Widget, Logic and Test in one file, as Slicer's scripted-module template lays them out. The
computation lives in the Qt-free package ``nadslicer`` (tested in CI on real MRML with slicer-core)
and in the library ``notadiagnosis``; both are imported inside functions so that loading this module
at Slicer start-up costs nothing (no numpy, SimpleITK or torch at file scope).

Target: Slicer 5.8 and later. Python packages are installed at first use: torch through the PyTorch
extension, the others with ``slicer.packaging.pip_ensure`` on Slicer 5.12+ or, before 5.12, with
``slicer.util.pip_install`` behind a confirmation dialog.
"""
import logging
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

# Markups node classes reach the `slicer` namespace only after the Markups module has loaded, which is
# too late for the parameter node's annotations at import time; Slicer's parameterNodeWrapper
# documentation recommends importing them from their own package.
from vtkSlicerMarkupsModuleMRMLPython import vtkMRMLMarkupsFiducialNode

DISCLAIMER = (
    "Not a diagnosis: research use only. The probability estimates how LIDC-IDRI radiologists would rate "
    "a nodule's malignancy; the model has not been validated on patients and must not guide patient care."
)

#
# NotADiagnosis
#


class NotADiagnosis(ScriptedLoadableModule):
    """Module description shown in Slicer's module selector and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Not a Diagnosis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["Not-a-Diagnosis contributors"]
        self.parent.helpText = _(
            "<p><b>Not a diagnosis.</b> Research software: a second opinion on lung nodules for research only. "
            "It has not been validated on patients and must not be used for diagnosis or treatment decisions.</p>"
            "<p>Load a chest CT, place a point on each nodule, press <b>Classify</b>. For every point a 3D ResNet "
            "looks at the 64 mm cube around it (64<sup>3</sup> voxels at 1 mm, patient-aligned) and gives the "
            "probability that LIDC-IDRI radiologists would rate the nodule malignant (median rating 4-5 versus 1-2), "
            "with an uncertainty from flip test-time augmentation and warnings when the result may be unreliable. "
            "The saliency overlay shows which voxels drove the model's output; it is not a segmentation.</p>"
            "<p>Results go into a new table; clicking a row centres the slice views on that point. "
            "The input volume and point list are never modified.</p>"
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


#
# NotADiagnosisParameterNode
#


@parameterNodeWrapper
class NotADiagnosisParameterNode:
    """The module's choices, saved with the scene.

    inputVolume - the chest CT.
    pointList - one control point per nodule.
    device - where the model runs: Auto (CUDA, then Apple MPS, then CPU), CPU or GPU.
    testTimeAugmentation - average over flips and report their spread as uncertainty.
    computeSaliency - also compute the saliency overlay.
    resultsTable, saliencyVolume - the latest run's outputs (new nodes each run).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    pointList: vtkMRMLMarkupsFiducialNode
    device: Annotated[str, Choice(["Auto", "CPU", "GPU"])] = "Auto"
    testTimeAugmentation: bool = True
    computeSaliency: bool = True
    resultsTable: vtkMRMLTableNode
    saliencyVolume: vtkMRMLScalarVolumeNode


#
# NotADiagnosisWidget
#


class NotADiagnosisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, options, Classify, results. It holds no computation."""

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

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NotADiagnosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NotADiagnosisLogic()

        self.ui.disclaimerLabel.text = DISCLAIMER
        self.ui.placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        from nadslicer.model_info import bundled_model_summary

        self.ui.statusLabel.text = bundled_model_summary()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.classifyButton.connect("clicked(bool)", self.onClassifyButton)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onResultRowClicked)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._observePointList(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        from nadslicer.validation import default_input_volume

        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # Not GetFirstNodeByClass: it also returns label maps and the module's own saliency overlays.
            firstVolumeNode = default_input_volume(slicer.mrmlScene)
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[NotADiagnosisParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with the dynamic property "SlicerParameterName" in the .ui are bound to parameters.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        pointList = self._parameterNode.pointList if self._parameterNode else None
        self._observePointList(pointList)
        self.ui.placeWidget.setCurrentNode(pointList)
        resultsTable = self._parameterNode.resultsTable if self._parameterNode else None
        if self.ui.resultsTableView.mrmlTableNode() is not resultsTable:
            self.ui.resultsTableView.setMRMLTableNode(resultsTable)
        self._updateClassifyButton()

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

    def _updateClassifyButton(self, caller=None, event=None) -> None:
        from nadslicer.validation import input_problem

        parameterNode = self._parameterNode
        problem = _("Set up the module first.") if parameterNode is None else input_problem(parameterNode.inputVolume, parameterNode.pointList)
        if self._running:
            problem = _("A classification is running.")
        self.ui.classifyButton.enabled = problem is None
        self.ui.classifyButton.toolTip = problem or _("Classify every placed point (research use only, not a diagnosis).")

    def onClassifyButton(self) -> None:
        """Install what is missing (first use), classify with progress and cancel, show the results."""
        if self._running or self._parameterNode is None:
            return
        self._running = True
        self._updateClassifyButton()
        try:
            self._classify()
        finally:
            self._running = False
            self._updateClassifyButton()

    def _classify(self) -> None:
        import traceback

        from nadslicer.errors import NotADiagnosisError

        parameterNode = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                self.logic.ensureDependencies(self.resourcePath("requirements.txt"))
        except NotADiagnosisError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Not a Diagnosis"))
            return
        except Exception as error:  # an installer failing in a way nobody foresaw: say so, never a silent traceback
            logging.exception("Not a Diagnosis: installing the Python packages failed")
            slicer.util.errorDisplay(
                _("Installing the Python packages failed: {error}").format(error=error),
                windowTitle=_("Not a Diagnosis"), detailedText=traceback.format_exc(),
            )
            return
        import qt

        from notadiagnosis.classifier import CancelledError

        # Window-modal: while events are processed between batches, the inputs cannot be changed under
        # the running classification, but Cancel stays clickable.
        progressDialog = slicer.util.createProgressDialog(
            labelText=_("Loading the model..."), maximum=0, windowTitle=_("Not a Diagnosis"),
            windowModality=qt.Qt.WindowModal,
        )
        slicer.app.processEvents()

        def onProgress(done: int, total: int, message: str) -> bool:
            progressDialog.maximum = total
            progressDialog.value = done
            progressDialog.labelText = message
            slicer.app.processEvents()  # keeps the Cancel button responsive between batches
            return not progressDialog.wasCanceled

        try:
            result = self.logic.classify(
                parameterNode.inputVolume,
                parameterNode.pointList,
                device=parameterNode.device,
                tta=parameterNode.testTimeAugmentation,
                saliency=parameterNode.computeSaliency,
                progress=onProgress,
            )
        except CancelledError:
            self.ui.statusLabel.text = _("Cancelled: no results were kept.")
            return
        except NotADiagnosisError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Not a Diagnosis"))
            return
        except Exception as error:
            logging.exception("Not a Diagnosis: classification failed")
            slicer.util.errorDisplay(
                _("Classification failed: {error}").format(error=error),
                windowTitle=_("Not a Diagnosis"), detailedText=traceback.format_exc(),
            )
            return
        finally:
            progressDialog.close()

        parameterNode.resultsTable = result.table_node
        parameterNode.saliencyVolume = result.saliency_node
        self.ui.resultsTableView.setMRMLTableNode(result.table_node)
        self.ui.statusLabel.text = result.status

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
        """Make torch and the other needed packages importable, asking before installing."""
        import os

        from nadslicer.dependencies import ensure_dependencies

        if requirementsPath is None:
            requirementsPath = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        ensure_dependencies(requirementsPath)

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
    ):
        """Classify every placed point; returns ``nadslicer.logic.ClassificationResult`` (new table and saliency nodes)."""
        from nadslicer.logic import ClassificationOptions, classify

        options = ClassificationOptions(device=device, tta=tta, saliency=saliency, model_path=modelPath)
        return classify(volumeNode, pointListNode, options, progress=progress, classifier=classifier)


#
# NotADiagnosisTest
#


class NotADiagnosisTest(ScriptedLoadableModuleTest):
    """Self-test: the library's synthetic chest CT, points on its nodules, the default model."""

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

    def _syntheticScene(self):
        import numpy as np

        from nadslicer.volumes import add_volume_from_image
        from notadiagnosis.geometry import lps_to_ras
        from notadiagnosis.synthetic import make_synthetic_chest_ct

        image, nodules = make_synthetic_chest_ct(seed=0)
        volumeNode = add_volume_from_image(slicer.mrmlScene, image, "Synthetic chest CT")
        pointList = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
        for nodule in nodules:
            pointList.AddControlPoint(*lps_to_ras(np.asarray(nodule["center_lps"])), nodule["name"])
        return volumeNode, pointList, nodules

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
        volumeNode, pointList, nodules = self._syntheticScene()
        before = self._snapshot(volumeNode, pointList)
        logic = NotADiagnosisLogic()
        logic.ensureDependencies()

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
        self.assertIsNotNone(result.saliency_node)
        saliency = slicer.util.arrayFromVolume(result.saliency_node)
        self.assertGreaterEqual(float(saliency.min()), 0.0)
        self.assertLessEqual(float(saliency.max()), 1.0)
        self.assertGreater(float(saliency.max()), 0.0)
        self.assertIn("Model", result.status)
        self._assertUnchanged(before, self._snapshot(volumeNode, pointList))
        self.delayDisplay("Classification test passed")

    def test_NotADiagnosis_refuses_bad_inputs(self):
        import numpy as np
        from vtk.util.numpy_support import vtk_to_numpy

        from nadslicer.errors import NoPointsError, NonLinearTransformError, PointOutsideVolumeError

        volumeNode, pointList, _nodules = self._syntheticScene()
        logic = NotADiagnosisLogic()
        logic.ensureDependencies()
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
        volumeNode, pointList, _nodules = self._syntheticScene()
        slicer.util.selectModule("NotADiagnosis")
        widget = slicer.util.getModuleWidget("NotADiagnosis")
        widget.initializeParameterNode()
        parameterNode = widget._parameterNode
        parameterNode.inputVolume = volumeNode
        parameterNode.pointList = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "No points yet")
        self.assertFalse(widget.ui.classifyButton.enabled)
        parameterNode.pointList = pointList
        self.assertTrue(widget.ui.classifyButton.enabled)
        self.delayDisplay("Widget test passed")
