"""Which copy of the ``notadiagnosis`` library the module uses, and forgetting it on Reload.

The extension ships the library next to the module (``<scripted modules>/notadiagnosis``, with its
weights). A ``notadiagnosis`` pip-installed into Slicer's Python could shadow it — another version,
other weights — so the bundled copy is put first on ``sys.path`` and the panel says which copy is
used. Without a bundled copy (development: the module folder added as a module path) the importable
one is used and named.

Slicer's *Reload* re-executes the module file only; :func:`forget_packages` drops the module's own
packages from ``sys.modules`` so that edits to ``nadslicer`` and ``notadiagnosis`` are reloaded too.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import List, MutableMapping, Optional, Sequence

LIBRARY = "notadiagnosis"
#: The packages Reload must forget: the module's logic and the library.
OWN_PACKAGES = ("nadslicer", LIBRARY)


def bundled_library_dir(module_dir: Path) -> Optional[Path]:
    """The library packaged beside the module (``<module_dir>/notadiagnosis``), or None."""
    candidate = Path(module_dir) / LIBRARY
    return candidate if (candidate / "__init__.py").is_file() else None


def prefer_bundled_library(module_dir: Path, path: Optional[List[str]] = None) -> Optional[Path]:
    """Put ``module_dir`` first on ``path`` (default ``sys.path``) when it holds the bundled library.

    Returns the bundled library's folder, or None when there is none (nothing is changed then).
    """
    path = sys.path if path is None else path
    bundled = bundled_library_dir(module_dir)
    if bundled is None:
        return None
    entry = str(Path(module_dir))
    if path and path[0] == entry:
        return bundled
    while entry in path:
        path.remove(entry)
    path.insert(0, entry)
    return bundled


def library_in_use(module_dir: Path) -> str:
    """One sentence naming the copy of the library that imports (or would import) here."""
    loaded = sys.modules.get(LIBRARY)
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if origin is None:
        spec = importlib.util.find_spec(LIBRARY)
        origin = spec.origin if spec is not None else None
    if origin is None:
        return "The notadiagnosis library is missing from this installation; reinstall the extension."
    folder = Path(origin).resolve().parent
    bundled = bundled_library_dir(module_dir)
    if bundled is not None and folder == bundled.resolve():
        return f"Library: the copy bundled with the extension ({folder})."
    if bundled is not None:
        return (f"Library: a copy at {folder} shadows the one bundled with the extension ({bundled}); "
                "restart Slicer to use the bundled copy, or uninstall the other one.")
    return f"Library: {folder} (no copy is bundled beside the module)."


def forget_packages(modules: MutableMapping[str, object], packages: Sequence[str] = OWN_PACKAGES) -> List[str]:
    """Remove ``packages`` and their submodules from ``modules`` (``sys.modules``); returns the names removed."""
    removed = [name for name in list(modules)
               if any(name == package or name.startswith(package + ".") for package in packages)]
    for name in removed:
        del modules[name]
    return sorted(removed)
