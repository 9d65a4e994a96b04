"""Volume nodes <-> SimpleITK images, with the real geometry and nothing modified.

Slicer keeps a volume's voxel-to-patient mapping as an IJK->RAS matrix on the node, possibly under a
parent transform; ITK (and the library) speak LPS with origin, spacing and direction. A volume under
a *linear* transform is read as if the transform were hardened: the transform is multiplied into a
copy of the geometry, never into the node. A non-linear transform cannot be expressed as an image
geometry without resampling the whole CT, so it is refused with a message saying what to do.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
import vtk

from .errors import NonLinearTransformError, VolumeError
from .validation import volume_problem

# RAS <-> LPS in homogeneous coordinates: x and y change sign (the matrix is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a (4, 4) float64 array (a copy)."""
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)], dtype=np.float64)


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A (4, 4) array as a new vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


def check_linear_transform(node, role: str) -> None:
    """Raise :class:`NonLinearTransformError` when ``node`` sits under a non-linear transform.

    ``role`` names the node for the user ("volume", "point list").
    """
    transform = node.GetParentTransformNode()
    if transform is not None and not transform.IsTransformToWorldLinear():
        raise NonLinearTransformError(
            f"The {role} '{node.GetName()}' is under the non-linear transform '{transform.GetName()}'; "
            "harden it (Data module: right-click the node, Harden transform) or remove it, then classify again."
        )


def parent_to_world(node) -> np.ndarray:
    """(4, 4) RAS matrix from the node's own space to world: its parent linear transforms, or identity."""
    check_linear_transform(node, "point list" if node.IsA("vtkMRMLMarkupsNode") else "volume")
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    return matrix_to_array(to_world)


def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's own IJK->RAS matrix (4, 4), parent transforms not applied."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def ijk_to_world_ras(volume_node) -> np.ndarray:
    """IJK->world RAS (4, 4): the node's geometry with its parent linear transforms hardened into a copy."""
    return parent_to_world(volume_node) @ ijk_to_ras(volume_node)


def geometry_from_ijk_to_lps(ijk_to_lps: np.ndarray):
    """(origin, spacing, direction row-major 9-tuple) of the ITK image whose index->LPS map is the matrix.

    Spacing is the length of each index axis; direction its unit vector. A linear transform with
    scaling or shear gives a non-orthonormal direction, which ITK accepts and the library resamples
    through correctly.
    """
    linear = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(linear)) < 1e-12:
        raise VolumeError("The volume's geometry is degenerate (zero spacing or collapsed axes); reload the volume.")
    direction = linear / spacing
    return tuple(ijk_to_lps[:3, 3]), tuple(spacing), tuple(direction.ravel())


def volume_to_image(volume_node) -> sitk.Image:
    """A copy of the volume as a SimpleITK image in world LPS, parent linear transforms applied.

    The voxels are copied (never a view on the node's memory), so nothing done to the image can
    reach the node.
    """
    if volume_node is None:
        raise VolumeError("No volume is selected; load a chest CT and select it as the input volume.")
    problem = volume_problem(volume_node)
    if problem is not None:
        raise VolumeError(problem)
    image_data = volume_node.GetImageData()
    if image_data.GetPointData().GetScalars() is None:
        raise VolumeError(f"The volume '{volume_node.GetName()}' holds no voxels; load the CT again.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise VolumeError(
            f"The volume '{volume_node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components per voxel; "
            "select a grey-level CT volume."
        )
    from vtk.util.numpy_support import vtk_to_numpy

    columns, rows, slices = image_data.GetDimensions()
    voxels = vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(slices, rows, columns)
    image = sitk.GetImageFromArray(np.array(voxels, copy=True))
    origin, spacing, direction = geometry_from_ijk_to_lps(RAS_TO_LPS @ ijk_to_world_ras(volume_node))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def image_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """IJK->RAS (4, 4) of a SimpleITK image (whose geometry is in LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return RAS_TO_LPS @ ijk_to_lps


def set_volume_from_image(volume_node, image: sitk.Image, ijk_to_ras_matrix: Optional[np.ndarray] = None) -> None:
    """Fill ``volume_node`` (a node the caller created) with the image's voxels and geometry.

    ``ijk_to_ras_matrix`` overrides the image's own geometry (used to place a map in a volume's local
    space under the same parent transform).
    """
    from vtk.util.numpy_support import get_vtk_array_type, numpy_to_vtk

    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_to_vtk(array.ravel(), deep=True, array_type=get_vtk_array_type(array.dtype))
    scalars.SetName("ImageScalars")
    image_data.GetPointData().SetScalars(scalars)
    volume_node.SetAndObserveImageData(image_data)
    matrix = image_ijk_to_ras(image) if ijk_to_ras_matrix is None else ijk_to_ras_matrix
    volume_node.SetIJKToRASMatrix(array_to_matrix(matrix))


def add_volume_from_image(scene, image: sitk.Image, name: str):
    """A new scalar volume node in ``scene`` holding the image (world geometry, no parent transform)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    set_volume_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node
