"""Results as new MRML nodes: a table of predictions, a point list whose labels carry them, and a
saliency overlay volume, placed next to the CT in the subject hierarchy.

Every run writes new nodes, each marked as an output of the module (never offered as an input);
nothing that existed before is changed except the slice views' foreground layer when the overlay is
shown, and the previous run's outputs when the user asked to replace them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import vtk

from notadiagnosis.geometry import lps_to_ras

from .validation import OUTPUT_ATTRIBUTE, is_output
from .volumes import ijk_to_ras, set_volume_from_image

#: Columns of the results table, in order. R, A, S and the classified centre are world coordinates in mm.
CLASSIFIED_COLUMNS = ("Classified R", "Classified A", "Classified S")
COLUMNS = ("Point", "R", "A", "S", *CLASSIFIED_COLUMNS, "Probability", "Uncertainty", "Warning")
COLUMN_DESCRIPTIONS = {
    "Point": "Control point label",
    "R": "Right coordinate of the point (world RAS)",
    "A": "Anterior coordinate of the point (world RAS)",
    "S": "Superior coordinate of the point (world RAS)",
    **{name: f"{axis} coordinate of the centre of the classified cube (world RAS): the nodule's refined centre, "
             "or the point itself when no nodule was found or classification at the point was chosen"
       for name, axis in zip(CLASSIFIED_COLUMNS, ("Right", "Anterior", "Superior"))},
    "Probability": "Calibrated probability that LIDC-IDRI radiologists would rate the nodule malignant (not a diagnosis)",
    "Uncertainty": "Spread (standard deviation) of the probability over flip test-time augmentation; nan when it is off",
    "Warning": "Why this result may be unreliable (empty when nothing was noticed)",
}
ATTRIBUTE_PREFIX = "NotADiagnosis."
SALIENCY_COLOR_TABLE_TAG = "NotADiagnosisSaliency"
SALIENCY_DISPLAY_THRESHOLD = 0.2  # below this the overlay is transparent, so the CT stays readable
# Slicer's scalar volume display ignores a colour table's alpha (a voxel is opaque or, below the
# threshold, transparent), so saliency is graded by colour only and blended with one layer opacity.
SALIENCY_LAYER_OPACITY = 0.5
RESULT_POINTS_COLOR = (1.0, 0.85, 0.0)  # yellow: distinct from the default red of the user's points
SUBJECT_HIERARCHY_FOLDER = "Not a Diagnosis results"


@dataclass
class OutputNodes:
    """The nodes one run created (any may be None)."""

    table_node: Optional[object] = None
    saliency_node: Optional[object] = None
    points_node: Optional[object] = None
    segmentation_node: Optional[object] = None
    centres_node: Optional[object] = None

    def nodes(self) -> list:
        return [node for node in (self.table_node, self.saliency_node, self.points_node, self.segmentation_node,
                                  self.centres_node) if node is not None]


def mark_output(node, role: str) -> None:
    """Mark ``node`` as created by the module (``role``: table, points, saliency...)."""
    node.SetAttribute(OUTPUT_ATTRIBUTE, role)


def write_results_table(
    scene,
    labels: Sequence[str],
    points_ras: np.ndarray,
    predictions: Sequence,
    metadata: Dict[str, str],
    name: str = "NotADiagnosis results",
    extra_columns: Sequence[tuple] = (),
    extra_warnings: Optional[Sequence[Sequence[str]]] = None,
):
    """A new table node with one row per point (see :data:`COLUMNS`); ``metadata`` goes into attributes.

    ``extra_columns``: ``(name, unit, description, values)`` inserted before the Warning column (the
    measurements; string values make a string column). ``extra_warnings``: more warnings per row.
    """
    columns = {
        "Point": vtk.vtkStringArray(),
        "R": vtk.vtkDoubleArray(),
        "A": vtk.vtkDoubleArray(),
        "S": vtk.vtkDoubleArray(),
        **{name: vtk.vtkDoubleArray() for name in CLASSIFIED_COLUMNS},
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
        centre_ras = lps_to_ras(np.asarray(prediction.centre_lps, dtype=np.float64))
        for name, value in zip(CLASSIFIED_COLUMNS, centre_ras):
            columns[name].InsertNextValue(float(value))
        columns["Probability"].InsertNextValue(float(prediction.probability))
        columns["Uncertainty"].InsertNextValue(float(prediction.uncertainty))
    for row, prediction in enumerate(predictions):
        more = list(extra_warnings[row]) if extra_warnings is not None else []
        columns["Warning"].InsertNextValue("; ".join(list(prediction.warnings) + more))
    extras = []
    for column_name, unit, description, values in extra_columns:
        array = vtk.vtkStringArray() if any(isinstance(value, str) for value in values) else vtk.vtkDoubleArray()
        array.SetName(column_name)
        for value in values:
            array.InsertNextValue(value if isinstance(array, vtk.vtkStringArray) else float(value))
        extras.append((column_name, unit, description, array))

    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    was_modifying = table_node.StartModify()
    table = table_node.GetTable()
    for column_name in COLUMNS[:-1]:
        table.AddColumn(columns[column_name])
    for _name, _unit, _description, array in extras:
        table.AddColumn(array)
    table.AddColumn(columns["Warning"])
    table_node.SetUseColumnTitleAsColumnHeader(True)
    for column_name, description in COLUMN_DESCRIPTIONS.items():
        table_node.SetColumnDescription(column_name, description)
    for column_name, unit, description, _array in extras:
        table_node.SetColumnDescription(column_name, description)
        if unit:
            table_node.SetColumnUnitLabel(column_name, unit)
    for axis in ("R", "A", "S", *CLASSIFIED_COLUMNS):
        table_node.SetColumnUnitLabel(axis, "mm")
    # Results are a record of what the model said: not to be edited in the table view.
    table_node.SetLocked(True)
    mark_output(table_node, "table")
    for key, value in metadata.items():
        table_node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    table_node.EndModify(was_modifying)
    return table_node


def read_results_table(table_node) -> List[Dict[str, object]]:
    """The rows of a results table as dicts (column name -> value, every column); for tests and scripts."""
    table = table_node.GetTable()
    names = [table.GetColumn(index).GetName() for index in range(table.GetNumberOfColumns())]
    rows = []
    for row in range(table.GetNumberOfRows()):
        values: Dict[str, object] = {}
        for column_name in names:
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
    mark_output(saliency_node, "saliency")  # so it is never offered as the input CT
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
        red, green, blue = saliency_color(t)
        color_table.SetColor(index, f"{t:.2f}", red, green, blue, 1.0)
    scene.AddNode(color_table)
    return color_table


def saliency_color(t: float) -> tuple:
    """RGB of saliency ``t`` in [0, 1]: dark red -> red -> orange -> yellow -> pale yellow.

    The grading is in the colour alone (see :data:`SALIENCY_LAYER_OPACITY`); brightness rises with
    saliency so that the order reads without a legend, also in grey scale.
    """
    red = min(1.0, 0.35 + 1.3 * t)
    green = min(1.0, max(0.0, 1.6 * t - 0.4))
    blue = max(0.0, 2.0 * t - 1.6)
    return red, green, blue


def rendered_layer(volume_node) -> np.ndarray:
    """(k, j, i, components) uint8: what the volume's display node makes of it for a slice view layer.

    Slicer's own display pipeline (window/level, threshold, colour table) run without a view: the
    check that an overlay renders as intended (RGBA for a colour table, grey + alpha for grey).
    """
    from vtk.util.numpy_support import vtk_to_numpy

    display = volume_node.GetDisplayNode()
    display.SetInputImageDataConnection(volume_node.GetImageDataConnection())
    producer = display.GetOutputImageDataConnection().GetProducer()
    producer.Update()
    output = producer.GetOutputDataObject(0)
    columns, rows, slices = output.GetDimensions()
    return vtk_to_numpy(output.GetPointData().GetScalars()).reshape(slices, rows, columns, -1)


def show_overlay(scene, background_node, foreground_node, opacity: float = SALIENCY_LAYER_OPACITY) -> int:
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


def result_point_label(label: str, prediction) -> str:
    """What the views show next to a result point, e.g. ``N1: 0.82 ±0.03``."""
    text = f"{label}: {float(prediction.probability):.2f}"
    uncertainty = float(prediction.uncertainty)
    if math.isfinite(uncertainty):
        text += f" \u00b1{uncertainty:.2f}"
    return text + (" (!)" if prediction.warnings else "")


def add_result_points(scene, labels: Sequence[str], points_ras: np.ndarray, predictions: Sequence,
                      name: str = "NotADiagnosis results points"):
    """A new, locked point list at the classified points (world RAS) whose labels carry the probabilities.

    The user's own point list is never changed; this one shows the results in the slice and 3D views.
    """
    points = [(result_point_label(label, prediction), ras, f"Probability {float(prediction.probability):.4f}. Not a diagnosis.")
              for label, ras, prediction in zip(labels, np.asarray(points_ras, dtype=np.float64), predictions)]
    return add_locked_points(scene, name, points, "points", RESULT_POINTS_COLOR)


def add_locked_points(scene, name: str, points: Sequence[tuple], role: str, color: Sequence[float]):
    """A new point list marked as the module's output ``role``, locked, in ``color``: one control point per
    ``(label, world RAS position, description)``."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    was_modifying = node.StartModify()
    for label, ras, description in points:
        index = node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]), label)
        node.SetNthControlPointDescription(index, description)
    node.SetLocked(True)
    mark_output(node, role)
    node.EndModify(was_modifying)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:  # headless MRML has no markups display nodes
        display.SetSelectedColor(*color)
        display.SetColor(*color)
    return node


def place_next_to(scene, reference_node, nodes: Sequence) -> bool:
    """Put ``nodes`` in a folder beside ``reference_node`` in the subject hierarchy (under its study).

    Returns False, leaving the nodes where they are, when the reference is not in the hierarchy.
    """
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return False
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if not reference_item:
        return False
    parent = hierarchy.GetItemParent(reference_item)
    folder = hierarchy.GetItemChildWithName(parent, SUBJECT_HIERARCHY_FOLDER)
    if not folder:
        folder = hierarchy.CreateFolderItem(parent, SUBJECT_HIERARCHY_FOLDER)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, folder)
        else:
            hierarchy.CreateItem(folder, node)
    return True


def remove_outputs(scene, outputs: OutputNodes, keep: Sequence = ()) -> int:
    """Remove the module's output nodes in ``outputs`` (never a node the module did not create, nor one
    in ``keep``); returns how many were removed."""
    kept = {node.GetID() for node in keep}
    removed = 0
    for node in outputs.nodes():
        if node.GetID() in kept or node.GetScene() is not scene or not is_output(node):
            continue
        scene.RemoveNode(node)
        removed += 1
    return removed


def center_slice_views(scene, position_ras: Sequence[float]) -> None:
    """Centre every slice view of ``scene`` on a world RAS position (mm), as clicking a result row does."""
    import slicer

    r, a, s = (float(value) for value in position_ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
