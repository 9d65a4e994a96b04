"""The on-disk training dataset: a directory of npz shards, a manifest and the nodule table.

Format "notadiagnosis-dataset/1" (see Training/README.md):

- ``manifest.json``: format, source, patch_size, spacing_mm, shards, params, complete, created, n_samples.
- ``nodules.csv``: one row per nodule (``nodule_id`` unique).
- ``shard-XXXXX.npz``: equal-length arrays ``patches_hu`` int16 (n,64,64,64) (z,y,x) in HU, ``labels`` uint8,
  ``nodule_ids``, ``patient_ids``, ``background``, ``split`` (unicode), ``render_index`` int16.

Every file is written atomically (temporary file + ``os.replace``) so an interrupted build leaves a
valid, resumable directory whose manifest says ``complete: false``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from notadiagnosis.atomic import write_atomic
from notadiagnosis.geometry import AIR_HU, PATCH_SIZE, PATCH_SPACING_MM

from .errors import DatasetError
from .files import json_default, write_json
from .nodule_table import read_nodule_table, write_nodule_table

FORMAT = "notadiagnosis-dataset/1"
SOURCES = ("lidc", "insertion", "medmnist")
DEFAULT_SHARD_SAMPLES = 256  # 256 x 512 KiB = 128 MiB per shard: few files, bounded memory
ARRAY_NAMES = ("patches_hu", "labels", "nodule_ids", "patient_ids", "render_index", "background", "split")


SampleKey = Tuple[str, str, int]  # (nodule_id, background, render_index)


def sample_key(nodule_id: str, background: str, render_index: int) -> SampleKey:
    """The identity of one sample, used to skip work already written when a build resumes."""
    return (str(nodule_id), str(background), int(render_index))


def _canonical_params(params: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(params, default=json_default, sort_keys=True))


def _read_manifest(path: Path) -> Dict[str, Any]:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise DatasetError(f"{path} is not a dataset (no manifest.json); build one with `nadtrain build`.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{manifest_path} is not valid JSON ({error}); rebuild the dataset.") from error
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild it with this version of nadtrain.")
    return manifest


def _shard_index(name: str) -> int:
    return int(name[len("shard-"):-len(".npz")])


class DatasetWriter:
    """Write a dataset directory shard by shard; a context manager that resumes interrupted builds.

    ``add`` buffers samples and writes a shard every ``shard_samples`` samples. On a clean exit the
    remaining buffer is written and the manifest says ``complete: true``; after an exception the
    buffered samples are still written (each was complete) but the manifest stays ``complete: false``.
    Opening a directory that already holds a dataset of the same source and params resumes it:
    ``done_keys()`` tells the builder which samples to skip. Different params raise DatasetError
    unless ``overwrite=True``, which deletes the old shards.
    """

    def __init__(self, path: Union[str, Path], source: str, params: Optional[Dict[str, Any]] = None,
                 shard_samples: int = DEFAULT_SHARD_SAMPLES, overwrite: bool = False) -> None:
        if source not in SOURCES:
            raise DatasetError(f"unknown dataset source {source!r}; use one of {', '.join(SOURCES)}.")
        if shard_samples < 1:
            raise DatasetError("shard_samples must be at least 1.")
        self.path = Path(path)
        self.source = source
        self.params = _canonical_params(params or {})
        self.shard_samples = int(shard_samples)
        self._buffer: Dict[str, List[np.ndarray]] = {name: [] for name in ARRAY_NAMES}
        self._buffered = 0
        self._shards: List[str] = []
        self._n_samples = 0
        self._done: Set[SampleKey] = set()
        self._created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # Free-form facts about the build (timings, nodules left out...), written into the manifest.
        self.build_info: Dict[str, Any] = {}
        self._open(overwrite)

    # -- opening / resuming -------------------------------------------------------------------
    def _open(self, overwrite: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        manifest_path = self.path / "manifest.json"
        existing = sorted(self.path.glob("shard-*.npz"))
        if manifest_path.exists() and not overwrite:
            manifest = _read_manifest(self.path)
            if manifest.get("source") != self.source or _canonical_params(manifest.get("params", {})) != self.params:
                raise DatasetError(
                    f"{self.path} already holds a {manifest.get('source')} dataset built with other options; "
                    "pass --overwrite or choose another --out.")
            self._created = manifest.get("created", self._created)
            self.build_info = dict(manifest.get("build") or {})
        elif existing and not overwrite:
            raise DatasetError(f"{self.path} holds shards but no manifest; pass --overwrite or choose another --out.")
        if overwrite:
            for shard in existing:
                shard.unlink()
            for name in ("manifest.json", "nodules.csv"):
                if (self.path / name).exists():
                    (self.path / name).unlink()
            existing = []
        # Resume from every readable shard on disk, including one written just before a crash that the
        # manifest had not listed yet; an unreadable one (impossible with atomic writes, but cheap to
        # handle) is removed so its samples are rebuilt.
        for shard in existing:
            try:
                with np.load(shard) as data:
                    ids = data["nodule_ids"]
                    backgrounds = data["background"]
                    renders = data["render_index"]
            except Exception:  # noqa: BLE001 - any unreadable shard is simply rebuilt
                shard.unlink()
                continue
            self._shards.append(shard.name)
            self._n_samples += len(ids)
            self._done.update(sample_key(i, b, r) for i, b, r in zip(ids, backgrounds, renders))
        if not manifest_path.exists():
            # A new directory gets its manifest at once (so shards written before a crash are resumable);
            # an existing one keeps its manifest until something new is written.
            self._write_manifest(complete=False)

    def done_keys(self) -> Set[SampleKey]:
        """Keys ``(nodule_id, background, render_index)`` of samples already written (see ``sample_key``)."""
        return set(self._done)

    @property
    def n_samples(self) -> int:
        """Samples written to shards plus samples still buffered."""
        return self._n_samples + self._buffered

    # -- writing ------------------------------------------------------------------------------
    def add(self, patches_hu: np.ndarray, labels: Sequence[int], nodule_ids: Sequence[str],
            patient_ids: Sequence[str], render_index: Optional[Sequence[int]] = None,
            background: Optional[Sequence[str]] = None, split: Optional[Sequence[str]] = None) -> None:
        """Buffer ``n`` samples (patches (n,64,64,64) in HU, any numeric dtype; per-sample metadata)."""
        patches = np.asarray(patches_hu)
        if patches.ndim == 3:
            patches = patches[None]
        n = patches.shape[0]
        if patches.shape[1:] != (PATCH_SIZE,) * 3:
            raise DatasetError(f"patches must be (n,{PATCH_SIZE},{PATCH_SIZE},{PATCH_SIZE}), got {patches.shape}.")
        if np.issubdtype(patches.dtype, np.floating):
            patches = np.rint(np.nan_to_num(patches, nan=AIR_HU, posinf=AIR_HU, neginf=AIR_HU))  # as inference reads them
        info = np.iinfo(np.int16)
        patches = np.clip(patches, info.min, info.max).astype(np.int16)
        columns = {
            "patches_hu": patches,
            "labels": np.asarray(labels, dtype=np.uint8).reshape(-1),
            "nodule_ids": np.asarray([str(v) for v in nodule_ids], dtype=np.str_).reshape(-1),
            "patient_ids": np.asarray([str(v) for v in patient_ids], dtype=np.str_).reshape(-1),
            "render_index": np.asarray(render_index if render_index is not None else [0] * n, dtype=np.int16).reshape(-1),
            "background": np.asarray([str(v) for v in (background if background is not None else [""] * n)], dtype=np.str_).reshape(-1),
            "split": np.asarray([str(v) for v in (split if split is not None else [""] * n)], dtype=np.str_).reshape(-1),
        }
        for name, array in columns.items():
            if len(array) != n:
                raise DatasetError(f"{name} has {len(array)} entries for {n} patches.")
        if not np.all(np.isin(columns["labels"], (0, 1))):
            raise DatasetError("labels must be 0 (benign) or 1 (malignant).")
        for name, array in columns.items():
            self._buffer[name].append(array)
        self._buffered += n
        for key in zip(columns["nodule_ids"], columns["background"], columns["render_index"]):
            self._done.add(sample_key(*key))
        while self._buffered >= self.shard_samples:
            self._flush(self.shard_samples)

    def _flush(self, count: Optional[int] = None) -> None:
        if self._buffered == 0:
            return
        merged = {name: np.concatenate(parts) for name, parts in self._buffer.items()}
        count = self._buffered if count is None else count
        out = {name: array[:count] for name, array in merged.items()}
        rest = {name: array[count:] for name, array in merged.items()}
        next_index = max((_shard_index(s) for s in self._shards), default=-1) + 1
        name = f"shard-{next_index:05d}.npz"
        write_atomic(self.path / name, lambda handle: np.savez(handle, **out))
        self._shards.append(name)
        self._n_samples += count
        self._buffer = {key: ([array] if len(array) else []) for key, array in rest.items()}
        self._buffered -= count
        self._write_manifest(complete=False)

    def write_nodule_table(self, rows: Sequence[Dict[str, Any]]) -> Path:
        """Write ``nodules.csv`` (the table of every nodule the dataset's samples refer to)."""
        return write_nodule_table(self.path / "nodules.csv", rows)

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            "format": FORMAT,
            "source": self.source,
            "patch_size": PATCH_SIZE,
            "spacing_mm": PATCH_SPACING_MM,
            "shards": sorted(self._shards, key=_shard_index),
            "params": self.params,
            "complete": bool(complete),
            "created": self._created,
            "n_samples": int(self._n_samples),
            "build": self.build_info,
        }
        write_json(self.path / "manifest.json", manifest)

    def close(self, complete: bool = True) -> None:
        """Write what is buffered; mark the dataset complete only if ``complete`` and a nodule table exists."""
        self._flush()
        if complete and not (self.path / "nodules.csv").is_file():
            raise DatasetError(f"{self.path}: write the nodule table (write_nodule_table) before closing the dataset.")
        self._write_manifest(complete=complete)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


@dataclass
class Dataset:
    """A loaded dataset: per-sample arrays of equal length plus the nodule table and the manifest."""

    patches_hu: np.ndarray
    labels: np.ndarray
    nodule_ids: np.ndarray
    patient_ids: np.ndarray
    render_index: np.ndarray
    background: np.ndarray
    split: np.ndarray
    nodules: List[Dict[str, Any]] = field(default_factory=list)
    manifest: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.labels))

    def sample_keys(self) -> List[SampleKey]:
        """Every sample's (nodule_id, background, render_index), in the dataset's order."""
        return [sample_key(n, b, r) for n, b, r in zip(self.nodule_ids, self.background, self.render_index)]

    def sample_keys_sha256(self) -> str:
        """Digest of the ordered sample keys: two datasets with it equal index their samples alike."""
        digest = hashlib.sha256()
        for key in self.sample_keys():
            digest.update(("|".join(map(str, key)) + "\n").encode())
        return digest.hexdigest()

    def nodule_table(self) -> Dict[str, Dict[str, Any]]:
        """The nodule table keyed by nodule_id."""
        return {row["nodule_id"]: row for row in self.nodules}

    def subset(self, mask_or_index: np.ndarray) -> "Dataset":
        """A new Dataset with the selected samples (boolean mask or index array); the table is shared."""
        return Dataset(**{name: getattr(self, name)[mask_or_index] for name in ARRAY_NAMES},
                       nodules=self.nodules, manifest=self.manifest)


def read_manifest(path: Union[str, Path]) -> Dict[str, Any]:
    """The manifest of a dataset directory (raises DatasetError when absent or of another format)."""
    return _read_manifest(Path(path))


def load_dataset(path: Union[str, Path], allow_incomplete: bool = False, load_patches: bool = True) -> Dataset:
    """Load every shard of a dataset directory into memory.

    Raises DatasetError when the directory is missing, of another format, incomplete (an interrupted
    build: resume it with the same ``nadtrain build`` command) or inconsistent with its manifest.
    ``load_patches=False`` skips the pixel arrays (patches_hu is then an empty (0,64,64,64) array),
    which is fast and enough for splits and label statistics.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset directory {path} does not exist; build it with `nadtrain build`.")
    manifest = _read_manifest(path)
    if not manifest.get("complete") and not allow_incomplete:
        raise DatasetError(f"dataset {path} is incomplete (an interrupted build); rerun the same `nadtrain build` command to resume it.")
    parts: Dict[str, List[np.ndarray]] = {name: [] for name in ARRAY_NAMES}
    metadata = tuple(n for n in ARRAY_NAMES if n != "patches_hu")
    shard_paths = []
    for shard in manifest.get("shards", []):
        shard_path = path / shard
        if not shard_path.is_file():
            raise DatasetError(f"dataset {path} lists {shard} but the file is missing; rebuild the dataset.")
        shard_paths.append(shard_path)
        with np.load(shard_path) as data:
            for name in metadata:
                parts[name].append(data[name])
    empty = {
        "patches_hu": np.zeros((0,) + (PATCH_SIZE,) * 3, np.int16), "labels": np.zeros(0, np.uint8),
        "nodule_ids": np.zeros(0, "<U1"), "patient_ids": np.zeros(0, "<U1"), "render_index": np.zeros(0, np.int16),
        "background": np.zeros(0, "<U1"), "split": np.zeros(0, "<U1"),
    }
    arrays = {name: (np.concatenate(parts[name]) if parts[name] else empty[name]) for name in metadata}
    arrays["patches_hu"] = empty["patches_hu"]
    if load_patches and shard_paths:
        # Filled shard by shard into one preallocated array: peak memory is the dataset plus one shard
        # (concatenating would need twice the dataset, 8.6 GB for the full insertion build).
        arrays["patches_hu"] = np.empty((len(arrays["labels"]),) + (PATCH_SIZE,) * 3, dtype=np.int16)
        start = 0
        for shard_path in shard_paths:
            with np.load(shard_path) as data:
                patches = data["patches_hu"]
            if patches.shape[0] + start > len(arrays["labels"]) or patches.shape[1:] != (PATCH_SIZE,) * 3:
                raise DatasetError(f"{shard_path} holds patches inconsistent with its metadata; rebuild the dataset.")
            arrays["patches_hu"][start:start + len(patches)] = patches
            start += len(patches)
            del patches
        if start != len(arrays["labels"]):
            raise DatasetError(f"dataset {path} holds {start} patches for {len(arrays['labels'])} labels; rebuild it.")
    n = len(arrays["labels"])
    if manifest.get("complete") and n != int(manifest.get("n_samples", n)):
        raise DatasetError(f"dataset {path} holds {n} samples but its manifest says {manifest.get('n_samples')}; rebuild it.")
    nodules_path = path / "nodules.csv"
    nodules = read_nodule_table(nodules_path) if nodules_path.is_file() else []
    if manifest.get("complete"):
        known = {row["nodule_id"] for row in nodules}
        missing = set(arrays["nodule_ids"].tolist()) - known
        if missing:
            raise DatasetError(f"dataset {path}: {len(missing)} samples refer to nodules absent from nodules.csv (e.g. {sorted(missing)[0]}); rebuild it.")
    return Dataset(**arrays, nodules=nodules, manifest=manifest)


def load_patches(path: Union[str, Path], indices: Sequence[int]) -> np.ndarray:
    """The patches (k,64,64,64) int16 of the given sample indices (dataset order), reading only their shards."""
    path = Path(path)
    manifest = _read_manifest(path)
    wanted = np.asarray(indices, dtype=np.int64)
    out = np.zeros((len(wanted),) + (PATCH_SIZE,) * 3, dtype=np.int16)
    start = 0
    for shard in manifest.get("shards", []):
        with np.load(path / shard) as data:
            n = len(data["labels"])
            hit = np.flatnonzero((wanted >= start) & (wanted < start + n))
            if len(hit):
                patches = data["patches_hu"]
                out[hit] = patches[wanted[hit] - start]
        start += n
    if np.any(wanted >= start) or np.any(wanted < 0):
        raise DatasetError(f"sample index out of range: the dataset {path} holds {start} samples.")
    return out
