"""notadiagnosis — lung nodule malignancy second opinion for research. Not a diagnosis.

Physical-space patch extraction, a 3D ResNet, calibrated inference with flip TTA on ONNX Runtime
(torch optional), LayerCAM saliency, the nodule finder and its measurements (``measure_nodule``:
segmentation, axes, volume, type, size-only and Lung-RADS references), sha256-verified model files
bound to their card, readers and a command line. Knows nothing of 3D Slicer. Runtimes load on first
use of the names that need them, so ``import notadiagnosis`` stays cheap for the Slicer module;
``ResNet3D``, ``build_model``, ``save_model``, ``load_model`` and ``select_device`` need torch
(``notadiagnosis[torch]``).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .errors import InputError, NoDefaultModelError, NotADiagnosisError, PointOutsideImageError, WeightsError
from .geometry import PATCH_SIZE, PATCH_SPACING_MM, Patch, extract_patch, lps_to_ras, patch_reference, ras_to_lps
from .preprocessing import HU_MAX, HU_MIN, normalize_hu
from .finder import LABEL_NON_SOLID, LABEL_SOLID, NoduleSegmentation, find_nodule
from .measure import NoduleMeasurement, NoduleResult, measure_nodule
from .references import SizeOnlyModel, lung_rads_category

_LAZY = {
    "Classifier": "classifier",
    "Prediction": "classifier",
    "CancelledError": "classifier",
    "ResNet3D": "model",
    "build_model": "model",
    "ARCHITECTURES": "model",
    "save_model": "weights",
    "load_model": "weights",
    "select_device": "device",
    "DISCLAIMER": "disclaimer",
    "INFERENCE_REQUIREMENTS": "runtime",
}


def __getattr__(name: str) -> Any:
    """Import runtime-dependent names on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'notadiagnosis' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES", "CancelledError", "Classifier", "DISCLAIMER", "HU_MAX", "HU_MIN", "INFERENCE_REQUIREMENTS", "InputError",
    "NoDefaultModelError", "NotADiagnosisError", "PATCH_SIZE", "PATCH_SPACING_MM", "Patch",
    "PointOutsideImageError", "Prediction", "ResNet3D", "WeightsError", "__version__", "build_model",
    "extract_patch", "load_model", "lps_to_ras", "normalize_hu", "patch_reference", "ras_to_lps",
    "save_model", "select_device",
    "LABEL_NON_SOLID", "LABEL_SOLID", "NoduleMeasurement", "NoduleResult", "NoduleSegmentation", "SizeOnlyModel",
    "find_nodule", "lung_rads_category", "measure_nodule",
]
