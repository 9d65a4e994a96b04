"""Which runtime runs the model, and which packages inference needs.

ONNX Runtime is the default (``pip install notadiagnosis``: a small wheel, no torch); torch is the
optional extra ``notadiagnosis[torch]``. ``auto`` takes ONNX Runtime when it is installed and the
model has an ONNX file, else torch when it is installed. Installers (the Slicer module, scripts)
read the requirement constants here rather than repeating them.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .card import ModelCard

RUNTIMES = ("auto", "onnx", "torch")
#: Where the model runs, on either runtime: ``auto`` (a CUDA GPU when the runtime has one, then Apple MPS on
#: torch, else the CPU), ``cpu``, ``gpu`` (a GPU, or an error that says how to get one), ``cuda`` (``cuda:N``
#: for the N-th; not a command-line choice) or ``mps`` (torch only). The CLI, Training and the Slicer module
#: take their choices from here.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "gpu", "mps")
#: What inference needs, installed by ``pip install notadiagnosis`` (pyproject's dependencies; a test keeps
#: them equal). For a CUDA GPU, install ``onnxruntime-gpu`` (:data:`GPU_REQUIREMENT`) instead of onnxruntime.
INFERENCE_REQUIREMENTS = ("numpy>=1.21", "SimpleITK>=2.2", "onnxruntime>=1.14", "tqdm>=4.62")
GPU_REQUIREMENT = "onnxruntime-gpu>=1.14"
#: The optional torch runtime (``notadiagnosis[torch]``); exporting models also needs onnx (``[export]``).
TORCH_REQUIREMENTS = ("torch>=1.13", "safetensors>=0.4")
EXPORT_REQUIREMENTS = TORCH_REQUIREMENTS + ("onnx>=1.14",)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_runtime(runtime: str, card: "ModelCard") -> str:
    """``onnx`` or ``torch`` for the requested ``runtime`` (auto, onnx, torch) and the model's card."""
    choice = (runtime or "auto").lower()
    if choice not in RUNTIMES:
        raise InputError(f"Unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}.")
    onnx_ready = installed("onnxruntime")
    torch_ready = installed("torch") and installed("safetensors")
    if choice == "auto":
        if onnx_ready and card.onnx is not None:
            return "onnx"
        if torch_ready:
            return "torch"
        choice = "onnx"  # neither usable: say what the default needs
    if choice == "onnx" and not onnx_ready:
        raise InputError(
            "ONNX Runtime is not installed; run `pip install onnxruntime` (or onnxruntime-gpu for a CUDA GPU), "
            "or use the torch runtime (--runtime torch, pip install 'notadiagnosis[torch]')."
        )
    if choice == "torch" and not torch_ready:
        raise InputError("The torch runtime needs torch and safetensors; run `pip install 'notadiagnosis[torch]'`.")
    return choice
