"""Python packages the classifier needs, checked and installed at first use (never at import).

- torch comes from the PyTorch extension (``PyTorchUtils``), which picks the build matching the
  computer's CUDA driver; without that extension the user gets a message saying how to get it.
- The other packages (``Resources/requirements.txt``: safetensors, tqdm) are installed with
  ``slicer.packaging.pip_ensure`` on Slicer 5.12 and later (it asks the user first), or on older
  Slicer with ``slicer.util.pip_install`` after a confirmation dialog.

numpy and SimpleITK ship with Slicer. Nothing here runs when everything is already installed, so
headless use (CI with slicer-core) never reaches the Slicer application calls.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .errors import DependencyError

TORCH_REQUIREMENT = ">=1.13"
REQUESTER = "Not a Diagnosis"

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?\s*$")


def read_requirements(path: Path) -> List[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def _version_tuple(version: str) -> tuple:
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def is_satisfied(requirement: str) -> bool:
    """Whether ``name`` or ``name>=version`` is installed. Other specifiers count as satisfied if installed."""
    match = _REQUIREMENT.match(requirement)
    name = match.group(1) if match else re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0]
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    minimum = match.group(2) if match else None
    return minimum is None or _version_tuple(installed) >= _version_tuple(minimum)


def missing_requirements(requirements: Sequence[str]) -> List[str]:
    """The requirements that are not satisfied in this Python."""
    return [requirement for requirement in requirements if not is_satisfied(requirement)]


def torch_installed() -> bool:
    """Whether torch can be imported (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def ensure_torch(ask: bool = True) -> None:
    """Make torch importable, through the PyTorch extension when it must be installed.

    Raises :class:`DependencyError` with what to do when torch is missing and cannot be installed.
    """
    if torch_installed():
        return
    try:
        import PyTorchUtils  # the PyTorch extension's module; present when that extension is installed
    except ImportError:
        raise DependencyError(
            "PyTorch is not installed: install the 'PyTorch' extension from the Extensions Manager, "
            "restart Slicer, then press Classify again."
        ) from None
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask, torchVersionRequirement=TORCH_REQUIREMENT)
    except (subprocess.CalledProcessError, RuntimeError, OSError, ImportError) as error:
        # pip failed, offline, no PythonSlicer, or torch installed but not importable.
        raise DependencyError(_failed_message(["torch"], error)) from None
    if torch is None:
        raise DependencyError(
            "PyTorch was not installed; open the 'PyTorch Utils' module to install it, then press Classify again."
        )


def ensure_packages(requirements: Sequence[str], confirm: Optional[Callable[[str], bool]] = None) -> None:
    """Install the missing ``requirements`` after the user agreed (Slicer 5.12+: ``pip_ensure``).

    ``confirm(message) -> bool`` is only used on Slicer before 5.12; it defaults to
    ``slicer.util.confirmOkCancelDisplay``.
    """
    missing = missing_requirements(requirements)
    if not missing:
        return
    try:
        import slicer.packaging as packaging  # Slicer >= 5.12
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(list(missing), requester=REQUESTER)
        except RuntimeError as error:
            # pip_ensure raises RuntimeError("User declined package installation"); other RuntimeErrors
            # (PythonSlicer not found, an install already running) are failures, not a choice.
            if "declined" in str(error).lower():
                raise DependencyError(_declined_message(missing)) from None
            raise DependencyError(_failed_message(missing, error)) from None
        except (subprocess.CalledProcessError, OSError) as error:
            raise DependencyError(_failed_message(missing, error)) from None
    else:
        import slicer.util

        app = getattr(slicer, "app", None)
        if confirm is None and app is not None and app.testingEnabled():
            # A self-test or ctest run must never block on a modal dialog.
            raise DependencyError(f"Missing Python packages in testing mode: {', '.join(missing)}; install them first.")
        ask = confirm or (lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle=REQUESTER))
        if not ask(f"{REQUESTER} needs these Python packages, which will be installed now: {', '.join(missing)}. Continue?"):
            raise DependencyError(_declined_message(missing))
        try:
            slicer.util.pip_install(" ".join(missing))
        except (subprocess.CalledProcessError, RuntimeError, OSError) as error:
            raise DependencyError(_failed_message(missing, error)) from None
    importlib.invalidate_caches()
    still_missing = missing_requirements(missing)
    if still_missing:
        raise DependencyError(
            f"Installing {', '.join(still_missing)} did not succeed; see the Python console, then restart Slicer and try again."
        )


def _failed_message(missing: Sequence[str], error: BaseException) -> str:
    return (
        f"Installing {', '.join(missing)} failed ({type(error).__name__}: {str(error).strip() or 'no details'}); "
        "see the Python console, check the network connection (or proxy) and press Classify again."
    )


def _declined_message(missing: Sequence[str]) -> str:
    return f"Classification needs {', '.join(missing)}; press Classify again and accept the installation."


def ensure_dependencies(requirements_path: Path, confirm: Optional[Callable[[str], bool]] = None) -> None:
    """torch first (the PyTorch extension), then the packages in ``requirements_path``."""
    ensure_torch()
    ensure_packages(read_requirements(requirements_path), confirm)
