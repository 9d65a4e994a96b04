"""Exceptions for user mistakes, and the warning class for inputs used despite a doubt.

Every error a user can cause (a wrong file, a point outside the CT, a tampered model) is raised as a
subclass of :class:`NotADiagnosisError` with a one-sentence message that says what was wrong and what
to do. The CLI and the Slicer module turn these into a message; programming errors raise normally.
"""
from __future__ import annotations

import sys
import warnings


class NotADiagnosisError(Exception):
    """Base class of every error caused by the user's input or setup."""


class InputError(NotADiagnosisError):
    """An input file, image or point list cannot be used as given."""


class PointOutsideImageError(InputError):
    """A point lies outside the CT's physical extent."""


class WeightsError(NotADiagnosisError):
    """Model weights or their card are missing, unreadable, tampered with or inconsistent."""


class NoDefaultModelError(WeightsError):
    """No trained default model is bundled with this installation."""


class NotADiagnosisWarning(UserWarning):
    """Something the user should know about an input that was used nonetheless (the CLI shows it as one line)."""


_python_showwarning = warnings.showwarning


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A ``warnings.showwarning`` for command lines: ours as one line (``notadiagnosis: warning: …``),
    others as Python shows them."""
    if issubclass(category, NotADiagnosisWarning):
        print(f"notadiagnosis: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)
