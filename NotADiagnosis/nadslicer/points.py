"""Control points of a point list, read in world coordinates.

Slicer stores a control point in its node's own coordinates; under a parent transform the position
a user sees in the slice views is the *world* position. Only placed points count: a point still
being dragged in from the toolbar (preview) or one whose position was cleared is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np

from .errors import NoPointsError
from .validation import position_defined_status
from .volumes import check_linear_transform


@dataclass
class ControlPoints:
    """Placed control points: their labels, world RAS positions (N, 3) in mm and indices in the node."""

    labels: List[str] = field(default_factory=list)
    positions_ras: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    indices: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def placed_points_world(markups_node) -> ControlPoints:
    """Labels and world RAS positions of the placed points; raises for a non-linear parent transform."""
    check_linear_transform(markups_node, "point list")
    defined = position_defined_status(markups_node)
    labels, positions, indices = [], [], []
    for index in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(index) != defined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position)
        labels.append(markups_node.GetNthControlPointLabel(index) or f"point {index + 1}")
        positions.append(position)
        indices.append(index)
    return ControlPoints(labels, np.asarray(positions, dtype=np.float64).reshape(-1, 3), indices)


def require_points(markups_node) -> ControlPoints:
    """The placed points in world RAS, or :class:`NoPointsError` when there are none."""
    if markups_node is None:
        raise NoPointsError("No point list is selected; create one and place a point on each nodule.")
    points = placed_points_world(markups_node)
    if len(points) == 0:
        raise NoPointsError(
            f"The point list '{markups_node.GetName()}' has no placed points; "
            "place at least one point on a nodule (Place button) and classify again."
        )
    return points
