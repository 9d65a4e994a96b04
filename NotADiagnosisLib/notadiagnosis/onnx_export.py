"""Write a model as ONNX for ONNX Runtime, bound to its card. Needs torch and onnx (``notadiagnosis[export]``).

The graph takes normalised patches ``patches`` (N, 1, D, H, W) float32, N free, and gives two
outputs: ``logit`` (N,), the network's logit (calibration stays in the card), and
``saliency_features`` (N, C, d, h, w), the feature maps of the residual stage that saliency reads
(:data:`.saliency.SALIENCY_STAGE`), which the forward pass computes anyway. The card's digest goes
into the file's ``metadata_props`` (:data:`.weights.CARD_DIGEST_KEY`), as it goes into the
safetensors header. The export is deterministic: the same network and card give the same bytes.
"""
from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import onnx
import torch

from .model import ResNet3D
from .onnx_backend import FEATURES_OUTPUT, INPUT_NAME, LOGIT_OUTPUT, ONNX_FORMAT
from .saliency import SALIENCY_STAGE

# Opset 17 (ONNX 1.12, 2022): every ONNX Runtime since 1.12 runs it, which matters inside Slicer, whose
# Python may hold an older onnxruntime; the network needs nothing newer (convolutions, pooling, Gemm).
ONNX_OPSET = 17


class LogitAndFeatures(torch.nn.Module):
    """The network with the saliency stage's feature maps as a second output."""

    def __init__(self, network: ResNet3D) -> None:
        super().__init__()
        self.network = network

    def forward(self, patches: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        activations = self.network.stem(patches)
        chosen = activations
        for index, stage in enumerate(self.network.stages):
            activations = stage(activations)
            if index == SALIENCY_STAGE:
                chosen = activations
        return self.network.classify_features(activations), chosen


def write_onnx(model: ResNet3D, path: Path, metadata: Dict[str, str], patch_size: int,
               opset: int = ONNX_OPSET) -> Dict[str, Any]:
    """Export ``model`` (eval mode, CPU) for ``patch_size``³ patches to ``path`` with ``metadata`` in its
    ``metadata_props``; returns the card's description of the graph (opset, input, outputs, exporter)."""
    graph = LogitAndFeatures(model).eval()
    example = torch.zeros(1, int(model.architecture.get("in_channels", 1)), patch_size, patch_size, patch_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 announces the dynamo exporter as the new default; the TorchScript exporter used here
        # needs no onnxscript and gives the same graph for this plain convolutional network.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(
            graph, (example,), buffer, input_names=[INPUT_NAME], output_names=[LOGIT_OUTPUT, FEATURES_OUTPUT],
            dynamic_axes={INPUT_NAME: {0: "n"}, LOGIT_OUTPUT: {0: "n"}, FEATURES_OUTPUT: {0: "n"}},
            opset_version=opset, do_constant_folding=True, **legacy,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {"format": ONNX_FORMAT, **metadata})
    onnx.checker.check_model(proto)
    Path(path).write_bytes(proto.SerializeToString())
    return {
        "opset": opset,
        "input": {INPUT_NAME: f"float32 (N, 1, {patch_size}, {patch_size}, {patch_size}): normalize_hu patches"},
        "outputs": {LOGIT_OUTPUT: "float32 (N,): uncalibrated logit",
                    FEATURES_OUTPUT: f"float32 (N, C, d, h, w): residual stage {SALIENCY_STAGE}'s feature maps, for saliency"},
        "exporter": f"torch {torch.__version__.split('+')[0]} (torch.onnx.export, TorchScript), onnx {onnx.__version__}",
    }
