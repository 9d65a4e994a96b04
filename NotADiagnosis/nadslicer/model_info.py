"""What the status line says before the first classification: the bundled model, read from its card.

Reading the card (JSON) needs neither torch nor the library's weights module, so opening the module
panel stays instant; loading and sha256 verification happen at the first Classify.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

# The library's bundled default model: <package>/models/default.json (notadiagnosis.weights).
DEFAULT_CARD = Path("models") / "default.json"


def library_dir() -> Optional[Path]:
    """Folder of the importable ``notadiagnosis`` package, found without importing it."""
    spec = importlib.util.find_spec("notadiagnosis")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def bundled_model_summary(package_dir: Optional[Path] = None) -> str:
    """One line naming the bundled model and its version, or saying that none is bundled."""
    package_dir = package_dir or library_dir()
    if package_dir is None:
        return "The notadiagnosis library is missing from this installation; reinstall the extension."
    card_path = Path(package_dir) / DEFAULT_CARD
    if not card_path.is_file():
        return "No default model is bundled with this installation; Classify will say what to do."
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"The bundled model card {card_path.name} cannot be read; reinstall the extension."
    name = str(card.get("name", "model"))
    version = str(card.get("version", ""))
    return f"Model {name} {version} (loaded and verified at the first Classify). Not a diagnosis.".replace("  ", " ")
