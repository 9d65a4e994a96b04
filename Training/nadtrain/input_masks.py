"""`nadtrain input-masks`: the library's nodule-masked input (``notadiagnosis.masking``) precomputed for a dataset.

Masking a patch runs the library's nodule finder on it (about 0.1 s of CPU), too slow to redo every
epoch, so the kept region of each sample (the voxels within the margin of the finder's nodule, or the
ball kept when it finds none) is computed once with the library's :func:`~notadiagnosis.masking.kept_region`
and stored beside, never inside, the dataset (a dataset may be shared read-only):

- ``input-masks.json``: format, the dataset's sample-key digest and size, the mask's parameters, the chunks;
- ``chunk-XXXXX.npz``: ``indices`` (dataset sample indices), ``keep_bits`` (``np.packbits`` of each
  sample's kept region, 64³ bits), ``found`` (the finder found the nodule).

Computed in chunks written atomically, so an interrupted run resumes, and for the samples asked for
(``--split`` of a run's ``splits.json``: training needs train and val only) or all of them. Training
(``nadtrain train --input-mask nodule``) and evaluation apply the stored regions with the library's
:func:`~notadiagnosis.masking.apply_kept_region`, so the network sees exactly what
:func:`~notadiagnosis.masking.mask_surroundings` gives at inference.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from notadiagnosis.atomic import write_atomic
from notadiagnosis.errors import InputError
from notadiagnosis.geometry import PATCH_SIZE, PATCH_SPACING_MM
from notadiagnosis.masking import DEFAULT_MARGIN_MM, FILL_HU, NOT_FOUND_RADIUS_MM, apply_kept_region, kept_region

from .dataset import Dataset, load_dataset, load_patches
from .files import write_json

FORMAT = "nadtrain-input-masks/1"
CHUNK_SAMPLES = 128
_VOXELS = PATCH_SIZE ** 3


def mask_params(margin_mm: float) -> Dict[str, Any]:
    """The masking a cache (and a model card's ``preprocessing.input_mask``) records."""
    return {"mode": "nodule", "margin_mm": float(margin_mm), "fill_hu": FILL_HU,
            "not_found_radius_mm": NOT_FOUND_RADIUS_MM, "function": "notadiagnosis.masking.mask_surroundings"}


@dataclass
class InputMasks:
    """The kept regions stored for a dataset: ``keep_bits`` (n, 64³/8) and ``found`` per sample,
    ``computed`` says which samples have one."""

    params: Dict[str, Any]
    keep_bits: np.ndarray
    found: np.ndarray
    computed: np.ndarray

    def keep(self, index: int) -> np.ndarray:
        return np.unpackbits(self.keep_bits[index], count=_VOXELS).astype(bool).reshape((PATCH_SIZE,) * 3)


def _manifest_path(cache: Path) -> Path:
    return cache / "input-masks.json"


def _read_cache_manifest(cache: Path) -> Optional[Dict[str, Any]]:
    path = _manifest_path(cache)
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise InputError(f"{cache} holds input masks of format {manifest.get('format')!r}, not {FORMAT!r}; "
                         "compute them again into another folder.")
    return manifest


def load_input_masks(cache: Path, data: Dataset, margin_mm: float) -> InputMasks:
    """The cache's kept regions for ``data`` (refused when made for another dataset or margin)."""
    cache = Path(cache)
    manifest = _read_cache_manifest(cache)
    if manifest is None:
        raise InputError(f"{cache} holds no input masks; compute them with `nadtrain input-masks DATASET --out {cache}`.")
    if manifest["sample_keys_sha256"] != data.sample_keys_sha256() or manifest["n_samples"] != len(data):
        raise InputError(f"the input masks in {cache} were computed for another dataset; compute them for this one "
                         "into another folder.")
    if manifest["params"] != mask_params(margin_mm):
        raise InputError(f"the input masks in {cache} were computed with {manifest['params']}, not a margin of "
                         f"{margin_mm:g} mm; compute them with this margin into another folder.")
    n = len(data)
    masks = InputMasks(params=manifest["params"], keep_bits=np.zeros((n, _VOXELS // 8), np.uint8),
                       found=np.zeros(n, bool), computed=np.zeros(n, bool))
    for chunk in manifest["chunks"]:
        with np.load(cache / chunk) as stored:
            indices = stored["indices"]
            masks.keep_bits[indices] = stored["keep_bits"]
            masks.found[indices] = stored["found"]
            masks.computed[indices] = True
    return masks


def compute_input_masks(dataset: Path, cache: Path, margin_mm: float = DEFAULT_MARGIN_MM,
                        indices: Optional[Sequence[int]] = None, progress: bool = True) -> Dict[str, Any]:
    """Compute (or complete) the kept regions of ``indices`` (default: every sample) into ``cache``;
    returns the cache manifest. Samples already stored are skipped; the dataset is only read."""
    dataset, cache = Path(dataset), Path(cache)
    data = load_dataset(dataset, load_patches=False)
    wanted = np.arange(len(data)) if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    manifest = _read_cache_manifest(cache)
    if manifest is None:
        cache.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "dataset": str(dataset.resolve()), "n_samples": len(data),
                    "sample_keys_sha256": data.sample_keys_sha256(), "params": mask_params(margin_mm),
                    "chunks": [], "seconds": 0.0, "cpu_seconds": 0.0}
        write_json(_manifest_path(cache), manifest)
    done = load_input_masks(cache, data, margin_mm).computed  # refuses a cache of another dataset or margin
    todo = wanted[~done[wanted]]
    bar = tqdm(total=len(todo), desc="input masks", unit="patch", disable=not progress)
    for start in range(0, len(todo), CHUNK_SAMPLES):
        chunk = todo[start:start + CHUNK_SAMPLES]
        started, cpu_started = time.perf_counter(), time.process_time()
        patches = load_patches(dataset, chunk)
        regions = [kept_region(patch, margin_mm, PATCH_SPACING_MM) for patch in patches]
        bar.update(len(chunk))
        name = f"chunk-{len(manifest['chunks']):05d}.npz"
        bits = np.stack([np.packbits(r.keep.ravel()) for r in regions])
        found = np.array([r.found for r in regions])
        write_atomic(cache / name, lambda handle: np.savez(handle, indices=chunk, keep_bits=bits, found=found))
        manifest["chunks"].append(name)
        manifest["seconds"] += time.perf_counter() - started
        manifest["cpu_seconds"] += time.process_time() - cpu_started
        write_json(_manifest_path(cache), manifest)
    bar.close()
    return manifest


def apply_input_masks(data: Dataset, masks: InputMasks, indices: Sequence[int]) -> np.ndarray:
    """Mask ``data.patches_hu`` in place (the loaded copy; the files are not touched) at ``indices``;
    every one of them needs a stored region. Returns the share of those samples whose nodule was found."""
    indices = np.asarray(indices, dtype=np.int64)
    missing = indices[~masks.computed[indices]]
    if missing.size:
        raise InputError(f"{missing.size} of the {indices.size} samples needed have no input mask stored (e.g. sample "
                         f"{int(missing[0])}); compute them with `nadtrain input-masks` (all samples, or --splits RUN "
                         "with the splits needed).")
    fill = np.float32(masks.params["fill_hu"])
    for i in indices:
        data.patches_hu[i] = apply_kept_region(data.patches_hu[i], masks.keep(int(i)), fill)
    return masks.found[indices]


def split_indices(splits_json: Path, names: Sequence[str]) -> np.ndarray:
    """The sample indices of the named splits of a run's ``splits.json``."""
    description = json.loads(Path(splits_json).read_text(encoding="utf-8"))
    try:
        return np.concatenate([np.asarray(description["indices"][name], dtype=np.int64) for name in names])
    except KeyError as error:
        raise InputError(f"{splits_json} has no split {error}; use train, val or test.") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain input-masks``."""
    parser.add_argument("dataset", help="dataset directory (only read)")
    parser.add_argument("--out", required=True, help="folder of the stored masks (resumed when it holds some)")
    parser.add_argument("--margin-mm", type=float, default=DEFAULT_MARGIN_MM,
                        help=f"kept margin around the finder's nodule (default {DEFAULT_MARGIN_MM:g})")
    parser.add_argument("--splits", help="a run's splits.json: only the samples of --split (default: every sample)")
    parser.add_argument("--split", nargs="+", default=["train", "val"], help="with --splits: which (default train val)")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    indices = split_indices(Path(args.splits), args.split) if args.splits else None
    manifest = compute_input_masks(Path(args.dataset), Path(args.out), args.margin_mm, indices, not args.no_progress)
    data = load_dataset(Path(args.dataset), load_patches=False)
    masks = load_input_masks(Path(args.out), data, args.margin_mm)
    print(f"input masks: {int(masks.computed.sum())} of {len(data)} samples stored in {args.out}, the nodule found in "
          f"{int(masks.found[masks.computed].sum())}; {manifest['seconds']:.0f} s ({manifest['cpu_seconds']:.0f} s CPU)")
    return 0


def mask_dataset(config: Any, data: Dataset, indices: Sequence[int]) -> np.ndarray:
    """Apply a run's input mask (``config.input_mask``, ``mask_margin_mm``, ``input_mask_cache``) to the loaded
    ``data`` at ``indices``; returns whether the finder found the nodule, per sample."""
    masks = load_input_masks(Path(config.input_mask_cache), data, config.mask_margin_mm)
    return apply_input_masks(data, masks, indices)


def masked_patches(patches_hu: np.ndarray, indices: Sequence[int], params: Dict[str, Any],
                   masks: Optional[InputMasks] = None) -> np.ndarray:
    """``patches_hu`` (the samples ``indices``) masked as a model card's ``preprocessing.input_mask`` says: the
    stored region where ``masks`` has one, else computed now by the library (the same function). A copy."""
    if params.get("mode") != "nodule":
        raise InputError(f"unknown input mask {params!r}: this nadtrain applies 'nodule' only.")
    margin_mm, fill = float(params["margin_mm"]), np.float32(params["fill_hu"])
    out = np.empty_like(patches_hu)
    for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
        stored = masks is not None and bool(masks.computed[i])
        keep = masks.keep(int(i)) if stored else kept_region(patches_hu[k], margin_mm, PATCH_SPACING_MM).keep
        out[k] = apply_kept_region(patches_hu[k], keep, fill)
    return out
