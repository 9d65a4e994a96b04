"""Whether the inputs allow a classification, checked cheaply (no numpy, SimpleITK or torch).

The widget calls :func:`input_problem` on every change to enable **Classify** and to say, in its
tooltip, what is missing. The full checks (points inside the CT, readable voxels) run in the logic.
"""
from __future__ import annotations

from typing import Optional

# vtkMRMLMarkupsNode::PositionDefined (stable since Slicer 4.11; read from the node when present).
_POSITION_DEFINED = 2
# The library's CT readers refuse volumes thinner than this along any axis; the module does the same.
MIN_VOXELS_PER_AXIS = 2
# Attribute the module sets on every node it creates (nadslicer.results writes it; the value names the
# role): outputs are never offered as inputs. Scenes saved by earlier versions marked saliency
# overlays with the second one.
OUTPUT_ATTRIBUTE = "NotADiagnosis.Output"
SALIENCY_ATTRIBUTE = "NotADiagnosis.Saliency"


def is_output(node) -> bool:
    """Whether ``node`` was created by this module (a result, not an input)."""
    return node.GetAttribute(OUTPUT_ATTRIBUTE) is not None or node.GetAttribute(SALIENCY_ATTRIBUTE) is not None


def output_volume_ids(scene) -> list:
    """IDs of the scene's volumes created by this module, which the input selector must hide."""
    ids = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLVolumeNode")
        if is_output(node):
            ids.append(node.GetID())
    return ids


def volume_problem(volume_node) -> Optional[str]:
    """Why this volume cannot be a chest CT input, in one sentence, or None."""
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        return f"'{volume_node.GetName()}' is a label map (a segmentation), not a CT; select the chest CT volume."
    image_data = volume_node.GetImageData()
    if image_data is None or min(image_data.GetDimensions()) < 1:
        return f"The volume '{volume_node.GetName()}' holds no voxels; load the CT again."
    if min(image_data.GetDimensions()) < MIN_VOXELS_PER_AXIS:
        return (f"The volume '{volume_node.GetName()}' has size {tuple(image_data.GetDimensions())}: a single slice; "
                "load the whole CT series (several voxels along every axis).")
    return None


def default_input_volume(scene):
    """The first plain scalar volume of the scene that is not one of the module's saliency overlays
    (label maps, vector volumes and overlays are not chest CTs), or None."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not is_output(node):
            return node
    return None


def position_defined_status(markups_node) -> int:
    """The value of ``vtkMRMLMarkupsNode.PositionDefined``."""
    return int(getattr(markups_node, "PositionDefined", _POSITION_DEFINED))


def count_placed_points(markups_node) -> int:
    """How many control points are placed (what Classify would use); 0 for no node."""
    if markups_node is None:
        return 0
    defined = position_defined_status(markups_node)
    return sum(
        1 for index in range(markups_node.GetNumberOfControlPoints())
        if markups_node.GetNthControlPointPositionStatus(index) == defined
    )


def _nonlinear_transform_name(node) -> Optional[str]:
    transform = node.GetParentTransformNode()
    if transform is not None and not transform.IsTransformToWorldLinear():
        return transform.GetName()
    return None


def input_problem(volume_node, markups_node) -> Optional[str]:
    """What stops a classification, in one sentence, or None when the inputs look usable."""
    if volume_node is None:
        return "Select the chest CT as input volume."
    problem = volume_problem(volume_node)
    if problem is not None:
        return problem
    if markups_node is None:
        return "Select or create a point list, then place a point on each nodule."
    if count_placed_points(markups_node) == 0:
        return f"Place at least one point of '{markups_node.GetName()}' on a nodule (Place button)."
    for node, role in ((volume_node, "volume"), (markups_node, "point list")):
        transform_name = _nonlinear_transform_name(node)
        if transform_name is not None:
            return f"The {role} '{node.GetName()}' is under the non-linear transform '{transform_name}'; harden or remove it."
    return None


def model_problem(use_bundled: bool, model_path: Optional[str]) -> Optional[str]:
    """Why the chosen model cannot be used, in one sentence, or None (the bundled model, or an existing file)."""
    if use_bundled:
        return None
    if not model_path or model_path.strip() in ("", "."):
        return "Choose a model file (its .onnx or .json card, the model's other files beside it) or tick 'Use the bundled model'."
    import os

    if not os.path.isfile(os.path.expanduser(model_path)):
        return f"The model file '{model_path}' does not exist; choose another or tick 'Use the bundled model'."
    return None
