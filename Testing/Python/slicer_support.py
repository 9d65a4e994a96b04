"""Shared helpers for the Slicer module's tests (test_slicer_*.py) on slicer-core's headless MRML.

Puts the module folder on ``sys.path`` so that its Qt-free logic package ``nadslicer`` imports as it
does inside Slicer, and builds small scenes: volume nodes from SimpleITK images, linear and grid
(non-linear) transforms, snapshots of inputs to prove they were not modified.
"""
from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path
from typing import Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "NotADiagnosis"
MODULE_FILE = MODULE_DIR / "NotADiagnosis.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "NotADiagnosis.ui"
LIBRARY_DIR = REPO_ROOT / "NotADiagnosisLib" / "notadiagnosis"

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def rigid_matrix(axis: Sequence[float], angle_deg: float, translation: Sequence[float]) -> np.ndarray:
    """4x4 rotation about ``axis`` then translation (mm)."""
    from helpers import rotation_matrix

    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(axis, angle_deg)
    matrix[:3, 3] = translation
    return matrix


def add_linear_transform(scene, matrix: np.ndarray, name: str = "T", parent=None):
    """A linear transform node (to parent = ``matrix``), optionally under another transform."""
    from nadslicer.volumes import array_to_matrix

    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(array_to_matrix(matrix))
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def add_grid_transform(scene, name: str = "Warp", seed: int = 0):
    """A non-linear (displacement grid) transform node covering +-150 mm."""
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    displacement = vtk.vtkImageData()
    displacement.SetDimensions(4, 4, 4)
    displacement.SetSpacing(100.0, 100.0, 100.0)
    displacement.SetOrigin(-150.0, -150.0, -150.0)
    displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
    vectors = vtk_to_numpy(displacement.GetPointData().GetScalars())
    vectors[:] = np.random.default_rng(seed).normal(0.0, 2.0, vectors.shape)
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(displacement)
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(grid)
    return node


def add_points(scene, positions_ras: np.ndarray, labels: Sequence[str], name: str = "Nodules"):
    """A point list with one placed control point per row of ``positions_ras`` (node coordinates)."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for position, label in zip(np.asarray(positions_ras, dtype=float), labels):
        node.AddControlPoint(float(position[0]), float(position[1]), float(position[2]), label)
    return node


def snapshot(volume_node, markups_node) -> dict:
    """Everything about the inputs a classification must leave alone."""
    import slicer

    from nadslicer.volumes import ijk_to_ras, matrix_to_array

    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPosition(index, position)
        points.append((markups_node.GetNthControlPointLabel(index), tuple(position),
                       markups_node.GetNthControlPointPositionStatus(index)))
    transforms = {}
    for node in (volume_node, markups_node):
        transform = node.GetParentTransformNode()
        if transform is not None and transform.IsLinear():
            import vtk

            matrix = vtk.vtkMatrix4x4()
            transform.GetMatrixTransformToParent(matrix)
            transforms[transform.GetID()] = matrix_to_array(matrix)
    return {
        "voxels": np.array(slicer.util.arrayFromVolume(volume_node), copy=True),
        "ijk_to_ras": ijk_to_ras(volume_node),
        "volume_transform": volume_node.GetTransformNodeID(),
        "volume_name": volume_node.GetName(),
        "points": points,
        "points_transform": markups_node.GetTransformNodeID(),
        "transform_matrices": transforms,
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    """Fail with the name of whatever changed."""
    assert np.array_equal(before["voxels"], after["voxels"]), "the input volume's voxels changed"
    assert np.array_equal(before["ijk_to_ras"], after["ijk_to_ras"]), "the input volume's IJK->RAS changed"
    assert before["points"] == after["points"], "the control points changed"
    for key in ("volume_transform", "volume_name", "points_transform"):
        assert before[key] == after[key], f"{key} changed"
    assert before["transform_matrices"].keys() == after["transform_matrices"].keys()
    for key, matrix in before["transform_matrices"].items():
        assert np.array_equal(matrix, after["transform_matrices"][key]), f"transform {key} changed"


def gui_stand_ins() -> dict:
    """Modules NotADiagnosis.py imports from Slicer's GUI layer, reduced to what loading it needs."""
    import slicer

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, *args, **kwargs):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    markups = types.ModuleType("vtkSlicerMarkupsModuleMRMLPython")
    markups.vtkMRMLMarkupsFiducialNode = slicer.vtkMRMLMarkupsFiducialNode
    segmentations = types.ModuleType("vtkSlicerSegmentationsModuleMRMLPython")
    segmentations.vtkMRMLSegmentationNode = slicer.vtkMRMLSegmentationNode
    return {
        "vtkSlicerSegmentationsModuleMRMLPython": segmentations,
        "slicer.ScriptedLoadableModule": scripted,
        "slicer.parameterNodeWrapper": wrapper,
        "slicer.i18n": i18n,
        "vtkSlicerMarkupsModuleMRMLPython": markups,
    }


def load_module_file(monkeypatch):
    """NotADiagnosis.py loaded with the GUI stand-ins and a fresh scene as ``slicer.mrmlScene``."""
    import importlib.util
    import sys

    import slicer

    for name, stand_in in gui_stand_ins().items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    spec = importlib.util.spec_from_file_location("NotADiagnosisUnderTest", MODULE_FILE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded
