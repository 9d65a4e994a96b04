"""The torch backend (the optional ``notadiagnosis[torch]`` extra): the model's safetensors file as a torch network.

Same interface as :class:`.onnx_backend.OnnxBackend`; training's evaluation runs through it, and it
keeps LayerCAM possible (which needs gradients).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

from .card import ModelCard
from .device import select_device
from .model import ResNet3D
from .saliency import layer_cam
from .weights import load_model


class TorchBackend:
    """A network on a torch device: ``logits`` for classification, ``layer_cam`` for saliency."""

    runtime = "torch"

    def __init__(self, model: ResNet3D, device: Union[str, torch.device] = "cpu", description: Optional[str] = None) -> None:
        if description is None:
            device, description = select_device(str(device))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._fast_model = _inference_copy(self.model)
        self.description = f"{description}, torch {torch.__version__.split('+')[0]}"

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N,) of normalised patches (N, 1, D, H, W)."""
        with torch.inference_mode():
            tensor = self._tensor(batch).contiguous(memory_format=torch.channels_last_3d)
            return self._fast_model(tensor).float().cpu().numpy()

    def layer_cam(self, patch: np.ndarray) -> np.ndarray:
        """LayerCAM (D, H, W) in [0, 1] of one normalised patch (D, H, W), by autograd."""
        return layer_cam(self.model, self._tensor(np.asarray(patch)[None, None]))


def load_torch_backend(path: Any, device: str = "auto", expected_sha256: Optional[str] = None,
                       threads: Optional[int] = None, card: Optional[ModelCard] = None) -> Tuple[TorchBackend, ModelCard]:
    """The model's verified safetensors file on ``device``; ``threads`` sets torch's intra-op threads; ``card``:
    the model's card when the caller has read it already (read here otherwise)."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    model, card = load_model(path, expected_sha256, card)
    torch_device, description = select_device(device)
    return TorchBackend(model, torch_device, description), card


def _inference_copy(model: ResNet3D) -> torch.nn.Module:
    """A copy of the eval-mode model made for fast inference: batch norm folded into the convolutions
    and channels-last memory (together about 2x faster on CPU; outputs equal to ~1e-6). The original
    stays as it is for saliency, which needs its stages."""
    fast: torch.nn.Module = copy.deepcopy(model).eval()
    try:
        with warnings.catch_warnings():  # torch's fx helpers raise deprecation noise about torch.jit
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse

            fast = fuse(fast)
    except Exception:  # noqa: BLE001 - an optimisation only: an older torch without fx fusion runs unfused
        pass
    return fast.to(memory_format=torch.channels_last_3d)
