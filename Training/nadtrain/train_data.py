"""What a training epoch sees: one item per nodule (a rendering drawn per epoch) or per sample,
stacked into batches normalised with the library's ``normalize_hu``."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from notadiagnosis.preprocessing import normalize_hu

from .dataset import Dataset


class NoduleEpochSet(TorchDataset):
    """Item ``i`` = one of group ``i``'s samples: with one group per nodule (several renders) and
    ``set_epoch``, each epoch sees every nodule once, through a rendering drawn per (seed, epoch).

    With ``renders_per_item=2`` (``--consistency``) item ``i`` is a list of two different renderings
    of the nodule (the same one twice if it has only one), drawn per (seed, epoch), which
    ``collate_normalized`` keeps next to each other in the batch."""

    def __init__(self, patches_hu: np.ndarray, labels: np.ndarray, groups: Sequence[np.ndarray], seed: int,
                 renders_per_item: int = 1) -> None:
        if renders_per_item not in (1, 2):
            raise ValueError("renders_per_item is 1 (one rendering per item) or 2 (a pair)")
        self.patches_hu = patches_hu
        self.labels = labels
        self.groups = [np.asarray(g) for g in groups]
        self.seed = seed
        self.renders_per_item = renders_per_item
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def sample_index(self, item: int) -> int:
        group = self.groups[item]
        if group.size == 1:
            return int(group[0])
        rng = np.random.default_rng((self.seed, self.epoch, item))
        return int(group[rng.integers(group.size)])

    def pair_indices(self, item: int) -> List[int]:
        """Two different renderings of group ``item`` (the only one twice if it has one)."""
        group = self.groups[item]
        if group.size == 1:
            return [int(group[0])] * 2
        rng = np.random.default_rng((self.seed, self.epoch, item, 2))
        return [int(group[k]) for k in rng.choice(group.size, size=2, replace=False)]

    def item_label(self, item: int) -> int:
        return int(self.labels[self.groups[item][0]])

    def __getitem__(self, item: int):
        if self.renders_per_item == 2:
            return [(self.patches_hu[j], int(self.labels[j]), j) for j in self.pair_indices(item)]
        j = self.sample_index(item)
        return self.patches_hu[j], int(self.labels[j]), j


def collate_normalized(batch):
    """Stack int16 HU patches and normalise them with the library's one normalisation; items that are
    pairs (lists) become two consecutive rows, so rows 2k and 2k + 1 are one nodule."""
    if batch and isinstance(batch[0], list):
        batch = [sample for item in batch for sample in item]
    patches = np.stack([b[0] for b in batch])
    x = torch.from_numpy(normalize_hu(patches)).unsqueeze(1)
    y = torch.tensor([b[1] for b in batch], dtype=torch.float32)
    idx = torch.tensor([b[2] for b in batch], dtype=torch.int64)
    return x, y, idx


def training_groups(data: Dataset, indices: np.ndarray, one_render: bool) -> List[np.ndarray]:
    """Groups of sample indices: one per nodule (all its renders and backgrounds) or one per sample."""
    if not one_render:
        return [np.array([i]) for i in indices]
    order = np.argsort(data.nodule_ids[indices], kind="stable")
    sorted_idx = indices[order]
    _, starts = np.unique(data.nodule_ids[sorted_idx], return_index=True)
    return np.split(sorted_idx, starts[1:])


def training_item_labels(data: Dataset, groups: Sequence[np.ndarray]) -> np.ndarray:
    """0/1 label of each training item (``training_groups``: a nodule, or a sample with --all-renders):
    what the class balancing counts, and so what the prior-shift calibration undoes."""
    return np.array([int(data.labels[group[0]]) for group in groups], dtype=np.int64)
