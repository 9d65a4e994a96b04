"""The model: a 3D ResNet family for 64³ CT patches, one input channel, one logit.

Depth (blocks per stage) and width (channels per stage) are configurable; the configuration is a
JSON-able dict stored in the model card so a weights file always rebuilds the same network. The
stem halves the resolution and a max-pool halves it again, so the residual stages work at 16³, 8³,
4³ and 2³: a 64 mm field of view at CPU-friendly cost (see Testing/Benchmarks for the measured
accuracy/speed trade-off between the named candidates in ``ARCHITECTURES``).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
from torch import nn

# Named candidates measured in Testing/Benchmarks/benchmark_inference.py.
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "resnet3d-tiny": {"name": "resnet3d", "widths": [8, 16, 32, 64], "blocks": [1, 1, 1, 1], "dropout": 0.2},
    "resnet3d-small": {"name": "resnet3d", "widths": [16, 32, 64, 128], "blocks": [1, 1, 1, 1], "dropout": 0.2},
    "resnet3d-medium": {"name": "resnet3d", "widths": [24, 48, 96, 192], "blocks": [2, 2, 2, 2], "dropout": 0.2},
}


class BasicBlock3D(nn.Module):
    """Two 3×3×3 convolutions with batch norm and an identity (or 1×1×1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet3D(nn.Module):
    """3D ResNet: stem (stride 2) + max-pool, one residual stage per width, global pooling, one logit.

    ``forward`` takes (N, 1, D, H, W) normalised patches and returns (N,) logits. The last stage's
    feature maps are exposed as ``features(x)`` for Grad-CAM.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        dropout: float = 0.2,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError("widths and blocks must be non-empty and of equal length")
        self.architecture: Dict[str, Any] = {
            "name": "resnet3d",
            "widths": [int(w) for w in widths],
            "blocks": [int(b) for b in blocks],
            "dropout": float(dropout),
            "in_channels": int(in_channels),
        }
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages = []
        channels = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            layers = []
            for block in range(count):
                stride = 2 if (block == 0 and index > 0) else 1
                layers.append(BasicBlock3D(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero-init the last BN of each residual branch: every block starts as identity (stabler training).
        for module in self.modules():
            if isinstance(module, BasicBlock3D):
                nn.init.zeros_(module.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps of the last residual stage, (N, C, d, h, w)."""
        return self.stages(self.stem(x))

    @staticmethod
    def pool(features: torch.Tensor) -> torch.Tensor:
        """The pooled features (N, C) the head reads: last-stage feature maps averaged over space.
        Training's auxiliary ratings head reads the same vector."""
        return torch.flatten(nn.functional.adaptive_avg_pool3d(features, 1), 1)

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (N,) from pooled features."""
        return self.head(self.dropout(pooled)).squeeze(1)

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (N,) from last-stage feature maps."""
        return self.classify_pooled(self.pool(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_features(self.features(x))


def build_model(architecture: Dict[str, Any]) -> ResNet3D:
    """Rebuild a network from its card's ``architecture`` dict (or a name from ``ARCHITECTURES``)."""
    if isinstance(architecture, str):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
        architecture = ARCHITECTURES[architecture]
    if architecture.get("name") != "resnet3d":
        raise ValueError(f"unsupported architecture {architecture.get('name')!r}")
    return ResNet3D(
        widths=architecture["widths"],
        blocks=architecture["blocks"],
        dropout=architecture.get("dropout", 0.0),
        in_channels=architecture.get("in_channels", 1),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
