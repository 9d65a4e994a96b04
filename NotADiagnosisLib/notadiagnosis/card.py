"""The model card as a type: parsed and checked once, then read as typed fields.

A card is the JSON document beside a model's files (see :mod:`.weights`): what the network expects
(patch geometry and HU window), how its logit becomes a probability (temperature, threshold), which
files it is and their sha256, and what was measured (metrics, the size-only reference). Every reader
(the classifier, the command line, the Slicer module, Training) gets a :class:`ModelCard` from
:meth:`ModelCard.parse`, which refuses a card missing anything inference reads with one sentence
(:class:`.WeightsError`), so nobody downstream needs a default or a second check.

The card keeps the whole document, unknown blocks included, and is also a read-only mapping over it
(``card["training"]``): :meth:`ModelCard.to_dict` gives back exactly the JSON it was parsed from, so
a card re-exported through the type is written byte for byte as before.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, NoReturn, Optional

from .errors import WeightsError
from .geometry import PATCH_SIZE, PATCH_SPACING_MM
from .masking import FILL_HU, NOT_FOUND_RADIUS_MM
from .preprocessing import HU_MAX, HU_MIN

CARD_FORMAT = "notadiagnosis-model-card/1"
#: What inference reads; a card read from disk also needs ``format`` and ``weights`` (:data:`FILE_KEYS`).
REQUIRED_KEYS = ("name", "version", "architecture", "preprocessing", "calibration", "threshold")
FILE_KEYS = ("format", "weights")
# Card blocks that describe the model files (name, format, sha256, size): left out of the card's digest,
# since the files' hashes can only be known after the digest is written into the files.
FILE_BLOCKS = ("weights", "onnx")
_FIX = "re-export the model with Training/ (nadtrain export)"


def preprocessing_block() -> Dict[str, Any]:
    """The card's ``preprocessing`` block for the library's own patch geometry and HU window (what
    Training writes into every card it makes)."""
    return {"patch_size": PATCH_SIZE, "spacing_mm": PATCH_SPACING_MM, "hu_min": HU_MIN, "hu_max": HU_MAX,
            "normalisation": "notadiagnosis.preprocessing.normalize_hu"}


@dataclass(frozen=True)
class Preprocessing:
    """How a patch is made for the network: ``patch_size``³ voxels of ``spacing_mm`` around the centre,
    HU clipped to [``hu_min``, ``hu_max``] and scaled to [0, 1]. ``input_mask_margin_mm`` is None for the
    plain patch, else the margin of :func:`~.masking.mask_surroundings` applied before normalisation
    (the card's ``preprocessing.input_mask`` block, mode ``nodule``)."""

    patch_size: int
    spacing_mm: float
    hu_min: float
    hu_max: float
    input_mask_margin_mm: Optional[float] = None


@dataclass(frozen=True)
class FileBlock:
    """A model file the card describes: its name, format and sha256 (and, for ONNX, its opset and the
    saliency file's block)."""

    file: Optional[str]
    format: Optional[str]
    sha256: Optional[str]
    opset: Optional[int] = None
    saliency: Optional["FileBlock"] = None

    @classmethod
    def parse(cls, block: Mapping[str, Any]) -> "FileBlock":
        sha256, saliency = block.get("sha256"), block.get("saliency")
        return cls(block.get("file"), block.get("format"), sha256 if isinstance(sha256, str) else None,
                   block.get("opset"), cls.parse(saliency) if isinstance(saliency, Mapping) else None)


@dataclass(frozen=True, eq=False)
class ModelCard(Mapping[str, Any]):
    """A checked model card. Build it with :meth:`parse`; read its typed fields, or any block by key."""

    name: str
    version: str
    architecture: Dict[str, Any]
    preprocessing: Preprocessing
    temperature: float
    threshold: float
    weights: Optional[FileBlock]
    onnx: Optional[FileBlock]
    size_only: Optional[Dict[str, Any]]
    metrics: Dict[str, Any]
    training: Dict[str, Any]
    disclaimer: Optional[str]
    description: str
    document: Dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, card: Mapping[str, Any], where: str = "The model card", files: bool = True) -> "ModelCard":
        """Check ``card`` (parsed JSON) and return it typed; raise :class:`WeightsError` naming the field
        and the fix. ``files``: the card describes written files, so it must also have ``format`` and
        ``weights`` (False for a card in memory, before export)."""
        if isinstance(card, ModelCard):
            return card

        def fail(problem: str) -> NoReturn:
            raise WeightsError(f"{where} {problem}; {_FIX}.")

        if not isinstance(card, Mapping):
            fail("is not a JSON object")
        missing = [key for key in ("format",) * files + REQUIRED_KEYS + ("weights",) * files if key not in card]
        if missing:
            fail(f"lacks {', '.join(missing)}")
        for key in ("architecture", "preprocessing", "calibration") + ("weights",) * files:
            if not isinstance(card[key], Mapping):
                fail(f"has a {key!r} that is not a JSON object")
        preprocessing, calibration = card["preprocessing"], card["calibration"]
        numbers = {
            "preprocessing.patch_size": preprocessing.get("patch_size"),
            "preprocessing.spacing_mm": preprocessing.get("spacing_mm"),
            "preprocessing.hu_min": preprocessing.get("hu_min"),
            "preprocessing.hu_max": preprocessing.get("hu_max"),
            "calibration.temperature": calibration.get("temperature"),
            "threshold": card["threshold"],
        }
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f"has no finite number for {name} (found {value!r})")
        patch_size = numbers["preprocessing.patch_size"]
        if patch_size != int(patch_size) or patch_size < 8:
            fail(f"has patch_size {patch_size!r}; a whole number of at least 8 voxels is needed")
        if numbers["preprocessing.spacing_mm"] <= 0 or numbers["calibration.temperature"] <= 0:
            fail("has a spacing or temperature that is not positive")
        if numbers["preprocessing.hu_min"] >= numbers["preprocessing.hu_max"]:
            fail("has hu_min not below hu_max")
        if not 0.0 <= numbers["threshold"] <= 1.0:
            fail(f"has threshold {numbers['threshold']!r}, not a probability")
        if files and not isinstance(card["weights"].get("sha256"), str):
            fail("has no sha256 of its tensors file")
        margin_mm = _input_mask_margin(preprocessing.get("input_mask"), fail)
        document = copy.deepcopy(dict(card))
        weights, onnx = document.get("weights"), document.get("onnx")
        return cls(
            name=str(document["name"]),
            version=str(document["version"]),
            architecture=copy.deepcopy(document["architecture"]),
            preprocessing=Preprocessing(int(patch_size), float(numbers["preprocessing.spacing_mm"]),
                                        float(numbers["preprocessing.hu_min"]), float(numbers["preprocessing.hu_max"]),
                                        margin_mm),
            temperature=float(numbers["calibration.temperature"]),
            threshold=float(numbers["threshold"]),
            weights=FileBlock.parse(weights) if isinstance(weights, Mapping) else None,
            onnx=FileBlock.parse(onnx) if isinstance(onnx, Mapping) else None,
            size_only=_block(document, "size_only") or None,
            metrics=_block(document, "metrics"),
            training=_block(document, "training"),
            disclaimer=_text(document, "disclaimer"),
            description=_text(document, "description") or "",
            document=document,
        )

    @property
    def title(self) -> str:
        """Name and version, e.g. ``default 1.3.0``."""
        return f"{self.name} {self.version}".strip()

    def to_dict(self) -> Dict[str, Any]:
        """The card's JSON document (a copy, unknown blocks included), as it was parsed."""
        return copy.deepcopy(self.document)

    # A read-only mapping over the document: blocks the type does not model (training, recipe,
    # reference predictions, blocks added later) are read by key; values are copies, so a reader
    # cannot change the card that the classifier uses.
    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self.document[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.document)

    def __len__(self) -> int:
        return len(self.document)


def _input_mask_margin(block: Any, fail: Callable[[str], NoReturn]) -> Optional[float]:
    """The margin of a card's ``preprocessing.input_mask`` block (None when the card has none): refused unless it
    is the masking this library applies, with its fill value and no-nodule rule, so a model never sees other input."""
    if block is None:
        return None
    if not isinstance(block, Mapping) or block.get("mode") != "nodule":
        fail(f"has an input_mask this library does not apply ({block!r}; known: mode 'nodule')")
    margin, fill, radius = block.get("margin_mm"), block.get("fill_hu"), block.get("not_found_radius_mm")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        fail(f"has no margin_mm of 0 or more in its input_mask (found {margin!r})")
    if fill != FILL_HU or radius != NOT_FOUND_RADIUS_MM:
        fail(f"has an input_mask with fill_hu {fill!r} and not_found_radius_mm {radius!r}, but this library masks with "
             f"{FILL_HU:g} HU and {NOT_FOUND_RADIUS_MM:g} mm")
    return float(margin)


def _text(document: Dict[str, Any], key: str) -> Optional[str]:
    value = document.get(key)
    return value if isinstance(value, str) else None


def _block(document: Dict[str, Any], key: str) -> Dict[str, Any]:
    """A copy of a free-form block of the card (``metrics``, ``training``...): the document, which is what
    :meth:`ModelCard.to_dict` writes back, cannot be changed through it. Empty when the card has none."""
    value = document.get(key)
    return copy.deepcopy(value) if isinstance(value, dict) else {}
