"""Model weights: safetensors tensors plus a JSON model card, verified by sha256. No pickle.

A model is two files side by side: ``<stem>.safetensors`` (the tensors) and ``<stem>.json`` (the
card: architecture, preprocessing constants, temperature, threshold, training data and recipe,
metrics with their split, the sha256 of the tensors file, version). Loading checks the card's
required fields, the file's sha256 (and, optionally, a sha256 the caller pins), then rebuilds the
network from the card and loads the tensors strictly.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from .errors import NoDefaultModelError, WeightsError

if TYPE_CHECKING:  # torch is imported only by the functions that need it: reading a card stays light.
    from .model import ResNet3D

CARD_FORMAT = "notadiagnosis-model-card/1"
DEFAULT_MODEL_NAME = "default"
REQUIRED_CARD_KEYS = ("format", "name", "version", "architecture", "preprocessing", "calibration", "threshold", "weights")
DISCLAIMER = (
    "Not a diagnosis: research use only. The probability estimates how LIDC-IDRI radiologists would "
    "rate the nodule's malignancy; the model has not been validated on patients."
)

PathLike = Union[str, "os.PathLike[str]"]


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(path: PathLike) -> Tuple[Path, Path]:
    """(tensors, card) paths for a model given by either file or by its common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_model(model: "ResNet3D", path: PathLike, card: Dict[str, Any]) -> Path:
    """Write ``model`` as ``<stem>.safetensors`` and its card ``<stem>.json``; return the card's path.

    The card given is completed (not modified in place) with the format, the architecture and the
    tensors file's name, format and sha256. Both files are written atomically.
    """
    from safetensors.torch import save_file

    tensors_path, card_path = model_files(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with _atomic_path(tensors_path) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt", "card": card_path.name})
    completed = json.loads(json.dumps(card))  # a deep copy that also proves the card is JSON-able
    completed["format"] = CARD_FORMAT
    completed["architecture"] = dict(model.architecture)
    completed.setdefault("disclaimer", DISCLAIMER)
    completed["weights"] = {
        "file": tensors_path.name,
        "format": "safetensors",
        "sha256": sha256_of(tensors_path),
        "bytes": tensors_path.stat().st_size,
    }
    missing = [key for key in REQUIRED_CARD_KEYS if key not in completed]
    if missing:
        raise ValueError(f"model card lacks {missing}")
    with _atomic_path(card_path) as temporary:
        temporary.write_text(json.dumps(completed, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return card_path


def read_card(path: PathLike) -> Dict[str, Any]:
    """Read and check a model card (JSON) without loading tensors."""
    _, card_path = model_files(path)
    if not card_path.is_file():
        raise WeightsError(f"Model card {card_path} not found; a model is a .safetensors file with its .json card beside it.")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"Model card {card_path} is not valid JSON ({error}); re-export or re-download the model.") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{card_path} is not a Not-a-Diagnosis model card (format {CARD_FORMAT!r} expected).")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise WeightsError(f"Model card {card_path} lacks {', '.join(missing)}; re-export the model with Training/.")
    return card


def load_model(path: PathLike, expected_sha256: Optional[str] = None) -> Tuple["ResNet3D", Dict[str, Any]]:
    """Load a model (eval mode, CPU) and its card, verifying the sha256 of the tensors file.

    ``expected_sha256`` pins the tensors file to a hash the caller trusts (e.g. one published with
    the model); the card's own hash is always checked too.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import build_model

    tensors_path, card_path = model_files(path)
    card = read_card(card_path)
    if not tensors_path.is_file():
        raise WeightsError(f"Model tensors {tensors_path} not found beside its card {card_path.name}.")
    actual = sha256_of(tensors_path)
    recorded = str(card["weights"].get("sha256", "")).lower()
    if actual != recorded:
        raise WeightsError(
            f"{tensors_path.name} does not match the sha256 in its card (file {actual[:12]}…, card {recorded[:12]}…): "
            "the file is damaged or was altered; re-download or re-export it."
        )
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise WeightsError(f"{tensors_path.name} has sha256 {actual}, not the expected {expected_sha256}.")
    try:
        state = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{tensors_path.name} is not a readable safetensors file ({error}).") from None
    try:
        model = build_model(card["architecture"])
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(f"The tensors in {tensors_path.name} do not fit the architecture in its card ({error}).") from None
    return model.eval(), card


def bundled_models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(__file__).resolve().parent / "models"


def default_model_path() -> Path:
    """Card path of the bundled default model; raises :class:`NoDefaultModelError` when there is none."""
    card_path = bundled_models_dir() / f"{DEFAULT_MODEL_NAME}.json"
    if not card_path.is_file():
        raise NoDefaultModelError(
            "No default model is bundled with this installation of notadiagnosis yet; "
            "train one with Training/ and pass it with --model PATH (or Classifier.load(path))."
        )
    return card_path


class _atomic_path:
    """Context manager giving a temporary path that replaces ``target`` only on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        handle, name = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=str(self.target.parent))
        os.close(handle)
        self.temporary = Path(name)
        return self.temporary

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # mkstemp creates files readable by their owner only; give the usual umask-based mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.temporary, 0o666 & ~umask)
            os.replace(self.temporary, self.target)
        else:
            self.temporary.unlink(missing_ok=True)
