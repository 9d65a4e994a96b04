"""The measured nodules as MRML nodes: a segmentation in the CT's space and the refined centres.

The library's ``measure_nodule`` finds and segments the nodule near each point and measures it; its
mask is a label map on a crop of the CT's own voxel lattice (1 ground glass, 2 solid component). Here:

- one **Segmentation** node beside the CT (under the CT's parent transform, so it follows the CT),
  with one segment per measured point, named after the point, shown in the slice and 3D views;
- one new, locked **point list** at the refined centres (the user's points are never moved);
- the measurement columns the results table gains (:data:`MEASUREMENT_COLUMNS`).

Points where no nodule was found get no segment and no centre; the reason is in the Warning column.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import vtk

from notadiagnosis.geometry import lps_to_ras

from .volumes import array_to_matrix, ijk_to_ras

#: Table columns added after the classification's: (name, unit, description). The values are the
#: library's ``NoduleMeasurement.summary()`` (the CLI's JSON ``measurement`` object).
MEASUREMENT_COLUMNS = (
    ("Long axis", "mm", "long_axis_mm", "Longest diameter in the axial plane, on the slice where it is greatest"),
    ("Short axis", "mm", "short_axis_mm", "Longest diameter perpendicular to the long axis on that slice"),
    ("Mean diameter", "mm", "mean_diameter_mm", "Average of the long and short axes (what Lung-RADS uses)"),
    ("Volume", "mm3", "volume_mm3", "Volume of the segmented nodule"),
    ("Type", "", "type", "solid, part-solid or ground-glass"),
    ("Solid mean diameter", "mm", "solid_mean_diameter_mm", "Mean diameter of the solid component (part-solid nodules)"),
    ("Size-only probability", "", "size_only_probability",
     "Probability of the LIDC label from the nodule's size alone (the reference beside the CNN)"),
    ("Lung-RADS", "", "lung_rads",
     "Lung-RADS v2022 category for a baseline screening exam from size and type; Lung-RADS also depends on "
     "history and growth, which the tool does not know"),
    ("Centre shift", "mm", "centre_shift_mm", "Distance from the point to the segmented nodule's centre"),
)
STRING_KEYS = ("type", "lung_rads")
SEGMENT_COLOR = (0.3, 0.85, 0.35)
CENTRES_COLOR = (0.2, 0.9, 1.0)


def measurement_values(result) -> dict:
    """Column name -> value of one point's measurement (``nan`` / empty when no nodule was found)."""
    summary = None if result is None or result.measurement is None else result.measurement.summary()
    values = {}
    for name, _unit, key, _description in MEASUREMENT_COLUMNS:
        value = None if summary is None else summary.get(key)
        if key in STRING_KEYS:
            values[name] = "" if value is None else str(value)
        else:
            values[name] = float("nan") if value is None else float(value)
    return values


def add_nodule_segmentation(scene, volume_node, labels: Sequence[str], results: Sequence, world_image: sitk.Image,
                            name: str = "NotADiagnosis nodules"):
    """A new segmentation node with one segment per measured point (None when no nodule was found at all).

    Each mask lies on a crop of ``world_image``'s lattice, which is the volume node's own lattice: its
    index offset there gives the segment's geometry in the node's local space, and the segmentation is
    put under the node's parent transform.
    """
    import slicer

    from .results import mark_output

    measured = [(label, result) for label, result in zip(labels, results)
                if result is not None and result.measurement is not None and result.mask is not None]
    if not measured:
        return None
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    local_ijk_to_ras = ijk_to_ras(volume_node)
    for label, result in measured:
        mask = result.mask
        lower = np.round(np.array(world_image.TransformPhysicalPointToContinuousIndex(mask.GetOrigin()))).astype(int)
        offset = np.eye(4)
        offset[:3, 3] = lower
        binary = (sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8)
        oriented = slicer.vtkOrientedImageData()
        oriented.SetDimensions(binary.shape[2], binary.shape[1], binary.shape[0])
        oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        from vtk.util.numpy_support import vtk_to_numpy

        vtk_to_numpy(oriented.GetPointData().GetScalars())[:] = binary.ravel()
        oriented.SetImageToWorldMatrix(array_to_matrix(local_ijk_to_ras @ offset))
        segment_id = segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(oriented, str(label), list(SEGMENT_COLOR))
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        segment.SetTag("NotADiagnosis.Type", result.measurement.type)
    segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    mark_output(segmentation_node, "segmentation")
    segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility2DFill(True)
        display.SetVisibility2DOutline(True)
        display.SetOpacity2DFill(0.3)
    if hasattr(segmentation_node, "CreateClosedSurfaceRepresentation"):
        segmentation_node.CreateClosedSurfaceRepresentation()  # shown in the 3D view
    return segmentation_node


def add_refined_centres(scene, labels: Sequence[str], results: Sequence, name: str = "NotADiagnosis refined centres"):
    """A new, locked point list at the segmented nodules' centres (world RAS); None when none was found."""
    from .results import add_locked_points

    found = [(label, result.measurement) for label, result in zip(labels, results)
             if result is not None and result.measurement is not None]
    if not found:
        return None
    points = [(f"{label} centre", lps_to_ras(np.asarray(m.centre_lps, dtype=np.float64)),
               f"Centre of the segmented nodule, {m.centre_shift_mm:.1f} mm from the point '{label}'.")
              for label, m in found]
    return add_locked_points(scene, name, points, "centres", CENTRES_COLOR)


def measurement_warnings(results: Sequence) -> List[List[str]]:
    """Per point, the measurement's warnings (no nodule found, truncated, calcification...)."""
    return [list(result.warnings) if result is not None else [] for result in results]


def segment_mask_array(segmentation_node, segment_name: str) -> Optional[np.ndarray]:
    """The binary labelmap of the segment named ``segment_name`` (k, j, i), for tests and scripts."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
    if not segment_id:
        return None
    labelmap = segmentation.GetSegment(segment_id).GetRepresentation("Binary labelmap")
    from vtk.util.numpy_support import vtk_to_numpy

    columns, rows, slices = labelmap.GetDimensions()
    return vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(slices, rows, columns)
