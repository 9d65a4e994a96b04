"""Where the model runs in Slicer: the panel's Device choice turned into the library's device name.

- **Auto**: an NVIDIA GPU when one is usable — through ``onnxruntime-gpu``'s CUDA execution provider
  (the library's default runtime), or else through torch's CUDA if torch happens to be installed
  (then the library's torch runtime runs the model) — otherwise the CPU with ONNX Runtime. Never Apple MPS: the operators
  3D networks need are incomplete there (TotalSegmentator disables it for the same reason), and it
  cannot be tested here, so it is not picked behind the user's back.
- **GPU**: the same GPU, or a message saying how to get one.
- **CPU**: the CPU.

:func:`gpu_description` says which GPU and through which runtime, for the tooltip and the status.
Probing imports the runtimes only when asked (at Classify), never when the panel opens; the module file
imports :data:`DEVICE_CHOICES` for its panel, so this file imports nothing beyond the standard library
when it is loaded. The runtime and device names a choice maps to are the library's
(``notadiagnosis.runtime.RUNTIMES`` and ``DEVICE_CHOICES``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

#: The panel's Device choices (the module file's parameter node offers these).
DEVICE_CHOICES = ("Auto", "CPU", "GPU")

_NO_GPU_MESSAGE = (
    "No NVIDIA GPU is usable by this Slicer; choose Device: Auto or CPU. To use one, install "
    "onnxruntime-gpu matching your CUDA driver (slicer.util.pip_install(\"onnxruntime-gpu\")) and restart Slicer."
)


def _optional_import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or a broken build: then it provides no GPU
        return None


@dataclass(frozen=True)
class Placement:
    """Where the library runs the model: its ``runtime`` (auto, onnx, torch) and ``device`` (cuda, cpu)."""

    runtime: str
    device: str
    description: str


CPU = Placement("auto", "cpu", "CPU")


def gpu_placement() -> Optional[Placement]:
    """The NVIDIA GPU the model would run on, and through which runtime; None when there is none."""
    onnxruntime = _optional_import("onnxruntime")
    if onnxruntime is not None and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return Placement("onnx", "cuda", "CUDA via ONNX Runtime (onnxruntime-gpu)")
    torch = _optional_import("torch")
    if torch is not None and torch.cuda.is_available():
        return Placement("torch", "cuda", f"CUDA via torch ({torch.cuda.get_device_name(0)})")
    return None


def gpu_description() -> Optional[str]:
    """Which GPU the model would run on, e.g. ``CUDA via ONNX Runtime``, or None when there is none."""
    placement = gpu_placement()
    return None if placement is None else placement.description


def placement_for(choice: str) -> Placement:
    """The runtime and device for a panel choice ("Auto", "CPU", "GPU")."""
    from .errors import InputError  # the library's error types: imported at Classify, not with the panel

    key = (choice or "Auto").strip().lower()
    if key not in {option.lower() for option in DEVICE_CHOICES}:
        raise InputError(f"Unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    if key == "cpu":
        return CPU
    gpu = gpu_placement()
    if key == "gpu" and gpu is None:
        raise InputError(_NO_GPU_MESSAGE)
    return gpu or CPU


def device_name(choice: str) -> str:
    """The library's device name ("cuda" or "cpu") for a panel choice ("Auto", "CPU", "GPU")."""
    return placement_for(choice).device
