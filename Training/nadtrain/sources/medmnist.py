"""`medmnist` source: MedMNIST's NoduleMNIST3D at 64³ (``nodulemnist3d_64.npz``), with its own split.

MedMNIST's npz holds ``train_images``, ``val_images``, ``test_images`` of shape (n, 64, 64, 64)
(or (n, 1, 64, 64, 64)) and ``train_labels``... of shape (n, 1) with 0 benign / 1 malignant
(LIDC-IDRI median malignancy 1-2 vs 4-5, 3 left out), resampled to 1 mm and centre-cropped by
MedMNIST. The images are uint8 in [0, 255] (floats in [0, 1] are accepted too); MedMNIST does not
document the HU window behind them, so absolute HU cannot be recovered. They are mapped linearly
onto [--hu-low, --hu-high] (default the library's normalisation window, -1000..400 HU), which makes
``notadiagnosis.preprocessing.normalize_hu`` give back exactly MedMNIST's intensities / 255: the
model sees MedMNIST's contrast unchanged. MedMNIST gives no patient ids: each sample is its own
"patient" (``medmnist/<split>/<index>``) and the ``split`` array carries MedMNIST's split, which
training must use instead of a patient split.
"""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from notadiagnosis.errors import InputError
from notadiagnosis.preprocessing import HU_MAX, HU_MIN

from notadiagnosis.geometry import PATCH_SIZE

from ..dataset import DatasetWriter, sample_key

SPLITS = ("train", "val", "test")
CHUNK = 64


class MedMnistError(InputError):
    """The MedMNIST npz is missing or not in NoduleMNIST3D's 64³ format."""


def images_to_hu(images: np.ndarray, hu_low: float = HU_MIN, hu_high: float = HU_MAX) -> np.ndarray:
    """MedMNIST intensities (uint8 0..255, or floats 0..1) to HU on the linear scale [hu_low, hu_high]."""
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.integer):
        unit = images.astype(np.float32) / 255.0
    else:
        unit = images.astype(np.float32)
        if unit.size and (unit.min() < -1e-3 or unit.max() > 1.0 + 1e-3):
            raise MedMnistError("floating-point MedMNIST images must lie in [0, 1]; give the original npz.")
    return hu_low + unit * (hu_high - hu_low)


def _read_split(data: Any, split: str) -> tuple:
    images = data[f"{split}_images"]
    labels = np.asarray(data[f"{split}_labels"]).reshape(-1)
    if images.ndim == 5 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 4 or images.shape[1:] != (PATCH_SIZE,) * 3:
        raise MedMnistError(f"{split}_images has shape {images.shape}; the 64³ version (nodulemnist3d_64.npz) is needed.")
    if len(labels) != len(images):
        raise MedMnistError(f"{split}_labels has {len(labels)} entries for {len(images)} images.")
    if not np.all(np.isin(labels, (0, 1))):
        raise MedMnistError(f"{split}_labels must be 0 (benign) or 1 (malignant).")
    return images, labels.astype(np.uint8)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--npz", type=Path, required=True, help="MedMNIST's nodulemnist3d_64.npz")
    parser.add_argument("--hu-low", type=float, default=HU_MIN, help=f"HU that intensity 0 maps to (default {HU_MIN:g})")
    parser.add_argument("--hu-high", type=float, default=HU_MAX, help=f"HU that intensity 255 maps to (default {HU_MAX:g})")


def build(args: argparse.Namespace) -> Dict[str, Any]:
    """Convert MedMNIST's npz to a dataset (single process: it is only a format conversion)."""
    path = Path(args.npz)
    if not path.is_file():
        raise MedMnistError(f"{path} does not exist; download nodulemnist3d_64.npz from MedMNIST (https://medmnist.com).")
    if not args.hu_low < args.hu_high:
        raise MedMnistError("--hu-low must be below --hu-high.")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise MedMnistError(f"{path} is not a readable npz file ({error}).") from error
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in data.files]
    if missing:
        raise MedMnistError(f"{path} lacks {', '.join(missing)}; give MedMNIST's nodulemnist3d_64.npz.")
    params = {"npz": path.name, "hu_low": args.hu_low, "hu_high": args.hu_high, "limit": args.limit}
    from tqdm import tqdm

    rows: List[Dict[str, Any]] = []
    counts = {}
    with data, DatasetWriter(Path(args.out), "medmnist", params, overwrite=args.overwrite) as writer:
        done = writer.done_keys()
        for split in SPLITS:
            images, labels = _read_split(data, split)
            n = len(images) if args.limit is None else min(len(images), args.limit)
            counts[split] = n
            ids = [f"medmnist/{split}/{i:04d}" for i in range(n)]
            rows.extend({"nodule_id": ids[i], "patient_id": ids[i], "label": int(labels[i]), "split": split} for i in range(n))
            for start in tqdm(range(0, n, CHUNK), desc=f"converting MedMNIST {split}", unit="chunk",
                              disable=getattr(args, "quiet", False)):
                chunk = [i for i in range(start, min(n, start + CHUNK)) if sample_key(ids[i], "", 0) not in done]
                if not chunk:
                    continue
                writer.add(images_to_hu(images[chunk], args.hu_low, args.hu_high), labels[chunk], [ids[i] for i in chunk],
                           [ids[i] for i in chunk], [0] * len(chunk), [""] * len(chunk), [split] * len(chunk))
        writer.write_nodule_table(rows)
        n_samples = writer.n_samples
    malignant = sum(r["label"] for r in rows)
    return {"samples": n_samples, **{f"{s}": counts[s] for s in SPLITS}, "malignant": malignant, "benign": len(rows) - malignant}
