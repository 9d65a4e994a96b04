"""nadslicer — the Not-a-Diagnosis Slicer module's logic, free of Qt.

Everything the module computes lives here so that it runs on the real MRML classes of the
``slicer-core`` package in CI, without the Slicer application: volume nodes to SimpleITK images
with their world geometry, control points to LPS, classification through the ``notadiagnosis``
library, results written into new table and volume nodes. The Qt widget in ``NotADiagnosis.py``
only collects choices and calls :func:`nadslicer.logic.classify`.

Submodules import numpy, SimpleITK and MRML only; the inference runtime is imported when a
classifier is loaded (on the worker thread, inside the panel's error handling).
"""
from __future__ import annotations

__all__ = [
    "background", "dependencies", "devices", "errors", "library", "logic", "measurements", "model_info", "points", "results",
    "sample_data", "validation", "volumes",
]
