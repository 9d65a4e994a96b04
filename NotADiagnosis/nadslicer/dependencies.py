"""Python packages the classifier needs, checked and installed at first use (never at import).

The packages come from one list, ``Resources/requirements.txt`` (name and minimum version per line).
Installing:

- Slicer 5.12 and later: ``slicer.packaging.pip_ensure``, which asks the user, shows its own
  progress dialog and, when pip fails, its own error dialog (so the panel must not show a second one).
- Slicer 5.8-5.11: a confirmation dialog, then ``slicer.util.pip_install`` (it streams pip's output
  to the Python console and keeps the window repainting); the busy cursor is shown during the install
  only, never under the confirmation dialog.
- Testing mode (``--testing``, ctest, the self-test run by Slicer's test harness): nothing is ever
  installed. Missing packages raise :class:`DependenciesMissingInTesting`, which the self-test turns
  into a skip with that message.

Presence is not enough: a package must also have the minimum version (an older copy already in
Slicer's Python is reported and upgraded), and the library's runtime must *import* — a broken
install (missing shared library, wrong CUDA build) becomes a one-sentence :class:`DependencyError`
the panel shows, not a traceback in the Python console.

numpy and SimpleITK ship with Slicer. Nothing here touches the Slicer application when everything
is already installed, so headless use (CI with slicer-core) never reaches the dialogs.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
import subprocess
from pathlib import Path
from typing import Callable, ContextManager, List, Optional, Sequence

from .errors import DependenciesMissingInTesting, DependencyError

REQUESTER = "Not a Diagnosis"
#: The one list of packages the module installs (relative to the module folder).
REQUIREMENTS_FILE = Path("Resources") / "requirements.txt"
#: What importing proves the inference runtime works (the library loads it only when a model loads).
RUNTIME_MODULE = "onnxruntime"

#: Distributions that provide the same importable package: onnxruntime-gpu is ONNX Runtime with CUDA.
#: Installing onnxruntime next to it would break both, so either one satisfies a requirement on the other.
EQUIVALENT_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?\s*$")


def read_requirements(path: Path) -> List[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def module_requirements(module_dir: Path) -> List[str]:
    """The module's requirements, read from :data:`REQUIREMENTS_FILE` under ``module_dir``."""
    return read_requirements(Path(module_dir) / REQUIREMENTS_FILE)


def _version_tuple(version: str) -> tuple:
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement line (``onnxruntime>=1.17`` -> ``onnxruntime``)."""
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0]


def installed_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name`` (or of an equivalent one), or None."""
    for candidate in EQUIVALENT_DISTRIBUTIONS.get(name.lower(), (name,)):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def is_satisfied(requirement: str) -> bool:
    """Whether ``name`` or ``name>=version`` is installed. Other specifiers count as satisfied if installed."""
    match = _REQUIREMENT.match(requirement)
    installed = installed_version(requirement_name(requirement))
    if installed is None:
        return False
    minimum = match.group(2) if match else None
    return minimum is None or _version_tuple(installed) >= _version_tuple(minimum)


def missing_requirements(requirements: Sequence[str]) -> List[str]:
    """The requirements that are not satisfied in this Python (absent, or older than the minimum)."""
    return [requirement for requirement in requirements if not is_satisfied(requirement)]


def describe_missing(requirements: Sequence[str]) -> str:
    """``onnxruntime>=1.17 (not installed), safetensors>=0.4 (0.3.1 installed)`` for messages."""
    described = []
    for requirement in requirements:
        installed = installed_version(requirement_name(requirement))
        described.append(f"{requirement} ({installed} installed)" if installed else f"{requirement} (not installed)")
    return ", ".join(described)


def testing_mode() -> bool:
    """Whether Slicer runs with ``--testing`` (False outside the Slicer application)."""
    import slicer

    app = getattr(slicer, "app", None)
    return bool(app is not None and app.testingEnabled())


def ensure_packages(
    requirements: Sequence[str],
    confirm: Optional[Callable[[str], bool]] = None,
    busy: Optional[Callable[[], ContextManager]] = None,
) -> None:
    """Install the missing ``requirements`` after the user agreed; raise :class:`DependencyError` otherwise.

    ``confirm(message) -> bool`` is only used on Slicer before 5.12 (default
    ``slicer.util.confirmOkCancelDisplay``); ``busy()`` is the context shown while pip runs there
    (default ``slicer.util.WaitCursor``).
    """
    missing = missing_requirements(requirements)
    if not missing:
        return
    if testing_mode():
        # Never install from a test run, and never let pip_ensure skip silently (it does on 5.12+).
        raise DependenciesMissingInTesting(
            f"Missing Python packages in testing mode: {describe_missing(missing)}; "
            f"install them in this Slicer first (slicer.util.pip_install(\"{' '.join(missing)}\")) to run these tests."
        )
    try:
        import slicer.packaging as packaging  # Slicer >= 5.12
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        _install_with_pip_ensure(packaging, missing)
    else:
        _install_with_pip_install(missing, confirm, busy)
    importlib.invalidate_caches()
    still_missing = missing_requirements(missing)
    if still_missing:
        raise DependencyError(
            f"Installing {describe_missing(still_missing)} did not succeed; see the Python console, "
            "then restart Slicer and press Classify again."
        )


def _install_with_pip_ensure(packaging, missing: Sequence[str]) -> None:
    try:
        packaging.pip_ensure(list(missing), requester=REQUESTER)
    except RuntimeError as error:
        # pip_ensure raises RuntimeError("User declined package installation"); other RuntimeErrors
        # (PythonSlicer not found, an install already running) are failures, not a choice.
        if "declined" in str(error).lower():
            raise DependencyError(_declined_message(missing)) from None
        raise DependencyError(_failed_message(missing, error)) from None
    except subprocess.CalledProcessError as error:
        # pip_ensure's progress dialog has already shown pip's log in an error dialog.
        raise DependencyError(_failed_message(missing, error), already_shown=True) from None
    except OSError as error:
        raise DependencyError(_failed_message(missing, error)) from None


def _install_with_pip_install(missing: Sequence[str], confirm, busy) -> None:
    import slicer.util

    ask = confirm or (lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle=REQUESTER))
    if not ask(f"{REQUESTER} needs these Python packages, which will be installed now: "
               f"{describe_missing(missing)}. Continue?"):
        raise DependencyError(_declined_message(missing))
    busy = busy or getattr(slicer.util, "WaitCursor", contextlib.nullcontext)
    try:
        with busy():
            slicer.util.pip_install(" ".join(missing))
    except (subprocess.CalledProcessError, RuntimeError, OSError) as error:
        raise DependencyError(_failed_message(missing, error)) from None


def _failed_message(missing: Sequence[str], error: BaseException) -> str:
    return (
        f"Installing {', '.join(missing)} failed ({type(error).__name__}: {str(error).strip() or 'no details'}); "
        "see the Python console, check the network connection (or proxy) and press Classify again."
    )


def _declined_message(missing: Sequence[str]) -> str:
    return f"Classification needs {', '.join(missing)}; press Classify again and accept the installation."


def import_runtime(module_name: str = RUNTIME_MODULE):
    """Import the library's inference runtime; any failure becomes a :class:`DependencyError`.

    A package can be installed yet not importable (a missing system library, a CUDA build that does
    not match the driver, a half-finished install). That must reach the user as a message.
    """
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # ImportError, OSError from a shared library, anything the runtime raises
        raise DependencyError(
            f"The inference runtime is installed but cannot be loaded ({type(error).__name__}: "
            f"{str(error).strip() or 'no details'}); reinstall it (or restart Slicer after an install), "
            "then press Classify again."
        ) from error


def ensure_dependencies(requirements_path: Path, confirm: Optional[Callable[[str], bool]] = None) -> None:
    """The packages of ``requirements_path`` installed (asking first), then the runtime imported."""
    ensure_packages(read_requirements(requirements_path), confirm)
    import_runtime()
