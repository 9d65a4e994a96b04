"""Errors the user can fix, each a subclass of the library's :class:`NotADiagnosisError`.

The widget shows their one-sentence message as is; anything else is a bug and shows a traceback.
"""
from __future__ import annotations

from notadiagnosis.errors import InputError, NotADiagnosisError, PointOutsideImageError


class NoPointsError(InputError):
    """The point list holds no placed control point."""


class PointOutsideVolumeError(PointOutsideImageError):
    """A control point lies outside the selected volume."""


class NonLinearTransformError(InputError):
    """The volume or the point list is under a non-linear (warping) transform."""


class VolumeError(InputError):
    """The selected volume cannot be read as a single-channel CT."""


class DependencyError(NotADiagnosisError):
    """A Python package the classifier needs (torch, safetensors, ...) is missing."""


__all__ = [
    "DependencyError", "InputError", "NoPointsError", "NonLinearTransformError", "NotADiagnosisError",
    "PointOutsideVolumeError", "VolumeError",
]
