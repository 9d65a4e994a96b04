"""Classification results as the user sees them: one row per point, and its table, JSON and CSV forms.

The single-CT command and the cohort mode both write through these functions, so a column added
to :func:`result_rows` and :data:`CSV_COLUMNS` appears in every output. Coordinates keep full
precision in JSON and CSV (a saved CSV reads back as a points file, points on the CT's edge
included); only the text table rounds them for the eye.
"""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

#: The reminder every output carries. Also in weights.DISCLAIMER, longer; repeated here so that
#: ``--help`` and errors need not import the inference runtime.
REMINDER = "Not a diagnosis: research use only; the model has not been validated on patients."

#: CSV columns, in order; ``r,a,s`` first among the numbers so the file reads back as a points file.
CSV_COLUMNS = ("label", "r", "a", "s", "probability", "uncertainty", "outside_fraction", "warnings", "saliency")


def result_rows(points: Sequence, predictions: Sequence, saliency_files: Dict[int, Path]) -> List[Dict[str, Any]]:
    """One plain dict per point, shared by the table, JSON and CSV outputs (and the cohort's)."""
    rows = []
    for index, (point, prediction) in enumerate(zip(points, predictions)):
        rows.append({
            "label": point.label,
            # + 0.0 turns the -0.0 of a sign flip into 0.0
            "point_ras": [float(v) + 0.0 for v in point.point_ras],
            "point_lps": [float(v) + 0.0 for v in point.point_lps],
            "probability": float(prediction.probability),
            "uncertainty": None if math.isnan(prediction.uncertainty) else float(prediction.uncertainty),
            "outside_fraction": float(prediction.outside_fraction),
            "logit": float(prediction.logit),
            "warnings": list(prediction.warnings),
            "saliency": str(saliency_files[index]) if index in saliency_files else None,
        })
    return rows


def results_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A fixed-width text table: point, R, A, S, probability, uncertainty, outside, warnings."""
    header = ["Point", "R (mm)", "A (mm)", "S (mm)", "Probability", "Uncertainty", "Outside", "Warnings"]
    body = []
    for row in rows:
        r, a, s = row["point_ras"]
        uncertainty = "n/a (no TTA)" if row["uncertainty"] is None else f"±{row['uncertainty']:.3f}"
        body.append([row["label"], f"{r:.1f}", f"{a:.1f}", f"{s:.1f}", f"{row['probability']:.3f}", uncertainty,
                     f"{row['outside_fraction']:.0%}", "; ".join(row["warnings"]) or "-"])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header) - 1)]
    lines = []
    for line in [header] + body:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:-1], widths[1:])]
        lines.append("  ".join(cells + [line[-1]]))
    return "\n".join(lines)


def model_summary(classifier) -> Dict[str, Any]:
    """The model's identity as outputs record it: name, version, the loaded file and its sha256 (what
    ``--model-sha256`` pins), threshold."""
    card = classifier.card
    block = card.get("onnx" if classifier.runtime == "onnxruntime" else "weights", {})
    return {"name": card.get("name"), "version": card.get("version"), "file": block.get("file"),
            "sha256": block.get("sha256"), "threshold": card.get("threshold")}


def results_document(rows, classifier, ct: str, tta: bool) -> Dict[str, Any]:
    """The ``--json`` document of one CT: reminder, CT, model, runtime, device, TTA and the rows."""
    return {
        "disclaimer": REMINDER,
        "ct": str(ct),
        "model": model_summary(classifier),
        "runtime": classifier.runtime,
        "device": classifier.device_description,
        "tta": tta,
        "points": list(rows),
    }


def csv_cells(row: Dict[str, Any]) -> List[str]:
    """The cells of one row under :data:`CSV_COLUMNS`; floats at full (round-trip) precision."""
    return [row["label"], *(repr(float(v)) for v in row["point_ras"]), repr(row["probability"]),
            "" if row["uncertainty"] is None else repr(row["uncertainty"]),
            repr(row["outside_fraction"]), "; ".join(row["warnings"]), row["saliency"] or ""]


def results_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """CSV with r,a,s columns, so the output can be read back as a points file.

    Its first line is the reminder as a ``#`` comment, so a saved file carries it (the points reader,
    and pandas with ``comment="#"``, skip it).
    """
    buffer = io.StringIO()
    buffer.write(f"# {REMINDER}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_cells(row) for row in rows)
    return buffer.getvalue()


def prepare_folder(directory: str | Path, purpose: str) -> Path:
    """Create an output folder (before any computation, so that an unwritable one costs nothing)."""
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from .errors import InputError

        raise InputError(f"Cannot create the {purpose} folder {folder} ({error.strerror}); choose a writable folder.") from None
    return folder


def write_saliency_maps(classifier, image, points: Sequence, directory: str | Path,
                        progress: bool = True) -> Dict[int, Path]:
    """Write one saliency NRRD per point into ``directory``; returns {point index: path}."""
    import SimpleITK as sitk

    from .errors import InputError

    folder = prepare_folder(directory, "saliency")
    written: Dict[int, Path] = {}
    for index, point in enumerate(progress_bar(points, desc="Saliency maps", unit="map", disable=not progress)):
        saliency = classifier.saliency(image, point.point_lps)
        path = folder / f"{index + 1:02d}-{safe_name(point.label)}-saliency.nrrd"
        try:
            sitk.WriteImage(saliency, str(path), True)
        except RuntimeError:
            raise InputError(f"Cannot write {path}; check that the folder is writable and has space.") from None
        written[index] = path
    return written


def progress_bar(iterable=None, **options):
    """A tqdm bar on stderr that appears only for work that lasts over a second."""
    from tqdm.auto import tqdm

    options.setdefault("leave", False)
    return tqdm(iterable, delay=1.0, **options)  # delay needs tqdm >= 4.62


def safe_name(label: str) -> str:
    """A label as a file-name part: letters, digits, dot, dash and underscore only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "point"
