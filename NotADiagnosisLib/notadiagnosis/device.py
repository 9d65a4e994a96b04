"""Torch device selection (the torch runtime and training): ``auto`` takes CUDA, then Apple MPS, then the
CPU, and says which. ONNX Runtime's execution providers are chosen in :mod:`.onnx_backend`."""
from __future__ import annotations

from typing import Tuple

import torch

from .errors import InputError
from .runtime import DEVICE_CHOICES


def select_device(name: str = "auto") -> Tuple[torch.device, str]:
    """Return the torch device for ``name`` and a human-readable description of it."""
    choice = (name or "auto").lower()
    if choice not in DEVICE_CHOICES and not choice.startswith("cuda:"):
        raise InputError(f"Unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu"
    if choice == "gpu":
        if torch.cuda.is_available():
            choice = "cuda"
        elif mps_available:
            choice = "mps"
        else:
            raise InputError("A GPU was asked for but neither CUDA nor Apple MPS is available; use --device cpu.")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("CUDA was asked for but this torch build or machine has no CUDA GPU; use --device cpu.")
        device = torch.device(choice)
        return device, f"{device} ({torch.cuda.get_device_name(device)})"
    if choice == "mps":
        if not mps_available:
            raise InputError("Apple MPS was asked for but is not available here; use --device cpu.")
        return torch.device("mps"), "mps (Apple GPU)"
    return torch.device("cpu"), f"cpu ({torch.get_num_threads()} threads)"
