"""Write a model as ONNX for ONNX Runtime, bound to its card. Needs torch and onnx (``notadiagnosis[export]``).

Two graphs, two files: ``<stem>.onnx`` takes normalised patches ``patches`` (N, 1, D, H, W)
float32, N free, and gives ``logit`` (N,), the network's logit (calibration stays in the card);
``<stem>.saliency.onnx`` also gives ``layer_cam`` (N, 1, d, h, w), LayerCAM of that logit on the
residual stage saliency reads (:data:`.saliency.SALIENCY_STAGE`, 8³ cells for 64³ patches) before
upsampling.

LayerCAM needs the logit's gradient with respect to that stage's feature maps, and ONNX Runtime
has no autograd; so the graph computes it as forward operations, the way backpropagation would:
the head's weights spread by the global average pool, then, through each later residual block in
reverse, ReLU masks from the forward pass, batch-norm scales and transposed convolutions with the
blocks' own weights. ``Testing/Python/test_onnx_runtime.py`` checks it against torch's autograd.

The card's digest goes into the file's ``metadata_props`` (:data:`.weights.CARD_DIGEST_KEY`), as it
goes into the safetensors header. The export is deterministic: the same network and card give the
same bytes.
"""
from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import onnx
import torch
from torch import nn

from .model import BasicBlock3D, ResNet3D
from .onnx_backend import INPUT_NAME, LAYER_CAM_OUTPUT, LOGIT_OUTPUT, ONNX_FORMAT
from .saliency import SALIENCY_STAGE

# Opset 17 (ONNX 1.12, 2022): every ONNX Runtime since 1.12 runs it, which matters inside Slicer, whose
# Python may hold an older onnxruntime; the network needs nothing newer (convolutions, pooling, Gemm).
ONNX_OPSET = 17


class LogitAndLayerCam(nn.Module):
    """The network (eval mode) with LayerCAM of its logit on the saliency stage as a second output."""

    def __init__(self, network: ResNet3D) -> None:
        super().__init__()
        self.network = network.eval()
        later = network.stages[SALIENCY_STAGE + 1 :]
        self.later_blocks: List[BasicBlock3D] = [block for stage in later for block in stage]

    def forward(self, patches: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        activations = self.network.stem(patches)
        for stage in self.network.stages[: SALIENCY_STAGE + 1]:
            activations = stage(activations)
        chosen = activations
        tape = []  # what each later block's backward needs from its forward pass
        for block in self.later_blocks:
            hidden = block.relu(block.bn1(block.conv1(activations)))
            output = block.relu(block.bn2(block.conv2(hidden)) + block.shortcut(activations))
            tape.append((activations, hidden, output))
            activations = output
        logit = self.network.classify_features(activations)
        # d logit / d last feature maps: the head's weight of each channel, spread evenly by the average pool.
        weights = self.network.head.weight.reshape(1, -1, 1, 1, 1) / float(activations[0, 0].numel())
        gradient = torch.ones_like(activations) * weights
        for block, (inputs, hidden, output) in zip(reversed(self.later_blocks), reversed(tape)):
            gradient = _block_input_gradient(block, inputs, hidden, output, gradient)
        cam = torch.relu((torch.relu(gradient) * chosen).sum(dim=1, keepdim=True))
        return logit, cam


def _block_input_gradient(block: BasicBlock3D, inputs: torch.Tensor, hidden: torch.Tensor, output: torch.Tensor,
                          gradient: torch.Tensor) -> torch.Tensor:
    """Backpropagate ``gradient`` (d logit / d the block's output) to the block's input, eval mode."""
    gradient = gradient * (output > 0).to(gradient.dtype)  # the closing ReLU
    into_hidden = _conv_input_gradient(block.conv2, gradient * _bn_scale(block.bn2), hidden)
    into_hidden = into_hidden * (hidden > 0).to(gradient.dtype) * _bn_scale(block.bn1)
    result = _conv_input_gradient(block.conv1, into_hidden, inputs)
    if isinstance(block.shortcut, nn.Sequential):  # projection: 1x1x1 convolution and batch norm
        convolution, norm = block.shortcut
        return result + _conv_input_gradient(convolution, gradient * _bn_scale(norm), inputs)
    return result + gradient


def _bn_scale(norm: nn.BatchNorm3d) -> torch.Tensor:
    """The factor an eval-mode batch norm multiplies each channel by, shaped to broadcast."""
    return (norm.weight / torch.sqrt(norm.running_var + norm.eps)).reshape(1, -1, 1, 1, 1)


def _conv_input_gradient(convolution: nn.Conv3d, gradient: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d/d(input) of a bias-free convolution given d/d(output): its transposed convolution, padded to the input's size."""
    kernel, stride, padding = convolution.kernel_size, convolution.stride, convolution.padding
    extra = tuple(int(size) - ((int(out) - 1) * s - 2 * p + k) for size, out, s, p, k
                  in zip(inputs.shape[2:], gradient.shape[2:], stride, padding, kernel))
    return nn.functional.conv_transpose3d(gradient, convolution.weight, stride=stride, padding=padding,
                                          output_padding=extra)


def write_onnx(model: ResNet3D, path: Path, metadata: Dict[str, str], patch_size: int, saliency: bool = False,
               opset: int = ONNX_OPSET) -> Dict[str, Any]:
    """Export ``model`` (eval mode, CPU) for ``patch_size``³ patches to ``path`` with ``metadata`` in its
    ``metadata_props``: the classification graph (``logit``), or with ``saliency`` the saliency graph
    (``logit`` and ``layer_cam``; a graph of its own, since ONNX Runtime runs every node of a graph
    whatever outputs are asked for, and the gradient would cost classification ~15 %). Returns the
    card's description of the graph (opset, input, outputs, exporter)."""
    graph = LogitAndLayerCam(model).eval() if saliency else model.eval()
    outputs = [LOGIT_OUTPUT, LAYER_CAM_OUTPUT] if saliency else [LOGIT_OUTPUT]
    example = torch.zeros(1, int(model.architecture.get("in_channels", 1)), patch_size, patch_size, patch_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 announces the dynamo exporter as the new default; the TorchScript exporter used here
        # needs no onnxscript and gives the same graph for this plain convolutional network.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the patch size is fixed by the card
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(
            graph, (example,), buffer, input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={name: {0: "n"} for name in [INPUT_NAME] + outputs},
            opset_version=opset, do_constant_folding=True, **legacy,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {"format": ONNX_FORMAT, **metadata})
    onnx.checker.check_model(proto)
    Path(path).write_bytes(proto.SerializeToString())
    described = {LOGIT_OUTPUT: "float32 (N,): uncalibrated logit",
                 LAYER_CAM_OUTPUT: f"float32 (N, 1, d, h, w): LayerCAM of the logit on residual stage {SALIENCY_STAGE}, "
                                   "before upsampling (gradient computed in the graph)"}
    return {
        "opset": opset,
        "input": {INPUT_NAME: f"float32 (N, 1, {patch_size}, {patch_size}, {patch_size}): normalize_hu patches"},
        "outputs": {name: described[name] for name in outputs},
        "exporter": f"torch {torch.__version__.split('+')[0]} (torch.onnx.export, TorchScript), onnx {onnx.__version__}",
    }
