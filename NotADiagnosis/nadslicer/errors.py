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
    """A Python package the classifier needs is missing, too old, declined, or fails to import.

    ``already_shown`` is True when Slicer itself has already shown the failure in a dialog (pip's log
    in ``slicer.packaging``'s progress dialog), so the panel says it in its status line only.
    """

    def __init__(self, message: str, already_shown: bool = False) -> None:
        super().__init__(message)
        self.already_shown = already_shown


class DependenciesMissingInTesting(DependencyError):
    """Packages are missing while Slicer runs in testing mode, where nothing may be installed."""


class CancelledError(NotADiagnosisError):
    """The user pressed Cancel; nothing was kept."""


__all__ = [
    "CancelledError", "DependenciesMissingInTesting", "DependencyError", "InputError", "NoPointsError", "NonLinearTransformError", "NotADiagnosisError",
    "PointOutsideVolumeError", "VolumeError",
]
