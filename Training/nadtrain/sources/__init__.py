"""Pixel sources of a dataset: `lidc` (real LIDC-IDRI CT), `insertion` (virtual insertion), `medmnist`."""
