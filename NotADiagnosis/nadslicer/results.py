"""Results as new MRML nodes: a table of predictions and a saliency overlay volume.

Every run writes new nodes; nothing that existed before is changed except the slice views'
foreground layer when the overlay is shown.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import vtk

from .validation import SALIENCY_ATTRIBUTE
from .volumes import ijk_to_ras, set_volume_from_image

#: Columns of the results table, in order. R, A, S are world coordinates in mm.
COLUMNS = ("Point", "R", "A", "S", "Probability", "Uncertainty", "Warning")
COLUMN_DESCRIPTIONS = {
    "Point": "Control point label",
    "R": "Right coordinate of the point (world RAS)",
    "A": "Anterior coordinate of the point (world RAS)",
    "S": "Superior coordinate of the point (world RAS)",
    "Probability": "Calibrated probability that LIDC-IDRI radiologists would rate the nodule malignant (not a diagnosis)",
    "Uncertainty": "Spread (standard deviation) of the probability over flip test-time augmentation; nan when it is off",
    "Warning": "Why this result may be unreliable (empty when nothing was noticed)",
}
ATTRIBUTE_PREFIX = "NotADiagnosis."
SALIENCY_COLOR_TABLE_TAG = "NotADiagnosisSaliency"
SALIENCY_DISPLAY_THRESHOLD = 0.2  # below this the overlay is transparent, so the CT stays readable


def write_results_table(
    scene,
    labels: Sequence[str],
    points_ras: np.ndarray,
    predictions: Sequence,
    metadata: Dict[str, str],
    name: str = "NotADiagnosis results",
):
    """A new table node with one row per point (see :data:`COLUMNS`); ``metadata`` goes into attributes."""
    columns = {
        "Point": vtk.vtkStringArray(),
        "R": vtk.vtkDoubleArray(),
        "A": vtk.vtkDoubleArray(),
        "S": vtk.vtkDoubleArray(),
        "Probability": vtk.vtkDoubleArray(),
        "Uncertainty": vtk.vtkDoubleArray(),
        "Warning": vtk.vtkStringArray(),
    }
    for column_name, array in columns.items():
        array.SetName(column_name)
    for label, ras, prediction in zip(labels, np.asarray(points_ras, dtype=np.float64), predictions):
        columns["Point"].InsertNextValue(str(label))
        for axis, value in zip("RAS", ras):
            columns[axis].InsertNextValue(float(value))
        columns["Probability"].InsertNextValue(float(prediction.probability))
        columns["Uncertainty"].InsertNextValue(float(prediction.uncertainty))
        columns["Warning"].InsertNextValue("; ".join(prediction.warnings))

    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    was_modifying = table_node.StartModify()
    table = table_node.GetTable()
    for column_name in COLUMNS:
        table.AddColumn(columns[column_name])
    table_node.SetUseColumnTitleAsColumnHeader(True)
    for column_name, description in COLUMN_DESCRIPTIONS.items():
        table_node.SetColumnDescription(column_name, description)
    for axis in "RAS":
        table_node.SetColumnUnitLabel(axis, "mm")
    # Results are a record of what the model said: not to be edited in the table view.
    table_node.SetLocked(True)
    for key, value in metadata.items():
        table_node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    table_node.EndModify(was_modifying)
    return table_node


def read_results_table(table_node) -> List[Dict[str, object]]:
    """The rows of a results table as dicts (column name -> value); for tests and the row click."""
    table = table_node.GetTable()
    rows = []
    for row in range(table.GetNumberOfRows()):
        values: Dict[str, object] = {}
        for column_name in COLUMNS:
            array = table.GetColumnByName(column_name)
            values[column_name] = array.GetValue(row) if array.IsA("vtkStringArray") else float(array.GetValue(row))
        rows.append(values)
    return rows


def row_position_ras(table_node, row: int) -> Optional[tuple]:
    """World RAS (mm) of a results row, or None for a row outside the table."""
    table = table_node.GetTable()
    if row < 0 or row >= table.GetNumberOfRows():
        return None
    position = tuple(float(table.GetColumnByName(axis).GetValue(row)) for axis in "RAS")
    return position if all(math.isfinite(value) for value in position) else None


def merge_maps_on_grid(maps: Sequence[sitk.Image], reference: sitk.Image):
    """Paste per-point maps, each on a crop of ``reference``'s voxel lattice, into one crop (voxel-wise max).

    Returns ``(array (k, j, i) float32, lower index (i, j, k))`` of the union of the crops. The
    library puts each saliency map exactly on the CT's lattice; a map that is not (another spacing
    or direction, or an origin off the lattice) is a programming error and raises ValueError.
    """
    if not maps:
        raise ValueError("no map to merge")
    lowers, uppers = [], []
    for saliency in maps:
        _check_same_lattice(saliency, reference)
        lower = np.array(reference.TransformPhysicalPointToContinuousIndex(saliency.GetOrigin()))
        if np.max(np.abs(lower - np.round(lower))) > 1e-3:
            raise ValueError("a saliency map's origin is not on the CT's voxel lattice")
        lower = np.round(lower).astype(int)
        lowers.append(lower)
        uppers.append(lower + np.array(saliency.GetSize()))
    union_lower = np.min(lowers, axis=0)
    union_upper = np.max(uppers, axis=0)
    extent = union_upper - union_lower
    merged = np.zeros((extent[2], extent[1], extent[0]), dtype=np.float32)
    for saliency, lower in zip(maps, lowers):
        start = lower - union_lower
        size = saliency.GetSize()
        window = (
            slice(start[2], start[2] + size[2]),
            slice(start[1], start[1] + size[1]),
            slice(start[0], start[0] + size[0]),
        )
        np.maximum(merged[window], sitk.GetArrayViewFromImage(saliency).astype(np.float32), out=merged[window])
    return merged, union_lower


def _check_same_lattice(saliency: sitk.Image, reference: sitk.Image) -> None:
    if not np.allclose(saliency.GetSpacing(), reference.GetSpacing(), rtol=1e-6, atol=1e-9):
        raise ValueError("a saliency map's spacing differs from the CT's")
    if not np.allclose(saliency.GetDirection(), reference.GetDirection(), atol=1e-6):
        raise ValueError("a saliency map's direction differs from the CT's")


def add_saliency_volume(scene, volume_node, maps: Sequence[sitk.Image], world_image: sitk.Image, name: str = "NotADiagnosis saliency"):
    """A new scalar volume node holding the merged saliency maps, in the CT's own space.

    ``world_image`` is the CT as given to the library (world LPS, parent transform hardened); its
    lattice is the volume node's lattice, so a map's index offset there is its offset in the node.
    The new node gets the node's local IJK->RAS shifted by that offset and the node's parent
    transform, so the overlay follows the CT if its transform is changed later.
    """
    merged, lower = merge_maps_on_grid(maps, world_image)
    offset = np.eye(4)
    offset[:3, 3] = lower
    local_ijk_to_ras = ijk_to_ras(volume_node) @ offset
    saliency_image = sitk.GetImageFromArray(merged)
    saliency_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    set_volume_from_image(saliency_node, saliency_image, local_ijk_to_ras)
    saliency_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    saliency_node.SetAttribute(SALIENCY_ATTRIBUTE, "true")  # so it is never offered as the input CT
    saliency_node.CreateDefaultDisplayNodes()
    display = saliency_node.GetDisplayNode()
    if display is not None:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(SALIENCY_DISPLAY_THRESHOLD)
        display.SetUpperThreshold(1.0)
        display.SetAndObserveColorNodeID(saliency_color_table(scene).GetID())
    return saliency_node


def saliency_color_table(scene):
    """The module's colour table for saliency (dark red through orange to yellow), created once per scene."""
    existing = scene.GetSingletonNode(SALIENCY_COLOR_TABLE_TAG, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    color_table = scene.CreateNodeByClass("vtkMRMLColorTableNode")
    color_table.UnRegister(None)  # owned by the Python variable, then by the scene
    color_table.SetSingletonTag(SALIENCY_COLOR_TABLE_TAG)
    color_table.SetName("NotADiagnosis saliency colours")
    color_table.SetTypeToUser()
    color_table.SetHideFromEditors(False)
    count = 256
    color_table.SetNumberOfColors(count)
    for index in range(count):
        t = index / (count - 1)
        # Red rises first, then green: black-red -> orange -> yellow; opacity grows with saliency.
        red = min(1.0, 0.35 + 1.3 * t)
        green = min(1.0, max(0.0, 1.6 * t - 0.4))
        blue = max(0.0, 2.0 * t - 1.6)
        color_table.SetColor(index, f"{t:.2f}", red, green, blue, 0.25 + 0.75 * t)
    scene.AddNode(color_table)
    return color_table


def show_overlay(scene, background_node, foreground_node, opacity: float = 0.5) -> int:
    """Show ``foreground_node`` over ``background_node`` in every slice view; returns how many views.

    Works on the scene's slice composite nodes, so it needs no GUI (headless scenes have none).
    """
    count = 0
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID())
        composite.SetForegroundOpacity(opacity)
        count += 1
    return count


def center_slice_views(scene, position_ras: Sequence[float]) -> None:
    """Centre every slice view of ``scene`` on a world RAS position (mm), as clicking a result row does."""
    import slicer

    r, a, s = (float(value) for value in position_ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
