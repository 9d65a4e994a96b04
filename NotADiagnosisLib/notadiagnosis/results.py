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
from typing import Any, Dict, List, Optional, Sequence

from .card import ModelCard
from .disclaimer import REMINDER
from .progress import progress_bar


#: CSV columns of the nodule's measurement (the JSON ``measurement`` keys, the centre as three
#: columns, and the label-map file); empty when nothing was measured or no nodule was found.
MEASUREMENT_CSV_COLUMNS = ("centre_x_lps", "centre_y_lps", "centre_z_lps", "centre_shift_mm", "long_axis_mm",
                           "short_axis_mm", "mean_diameter_mm", "volume_mm3", "type", "solid_mean_diameter_mm",
                           "size_only_probability", "lung_rads", "segmentation")
#: CSV columns, in order; ``r,a,s`` first among the numbers so the file reads back as a points file.
#: Where the cube was classified (RAS mm): the found nodule's centre when ``centred_on_nodule``, else the point.
CLASSIFIED_AT_CSV_COLUMNS = ("classified_r", "classified_a", "classified_s", "centred_on_nodule")
CSV_COLUMNS = ("label", "r", "a", "s", "probability", "uncertainty", "outside_fraction", "warnings",
               "saliency") + CLASSIFIED_AT_CSV_COLUMNS + MEASUREMENT_CSV_COLUMNS
MEASUREMENT_NOTE = "Measured: long x short axis on the axial slice of greatest extent, mean diameter, volume, type."


def result_rows(points: Sequence, predictions: Sequence, saliency_files: Dict[int, Path],
                nodules: Optional[Sequence] = None, segmentation_files: Optional[Dict[int, Path]] = None) -> List[Dict[str, Any]]:
    """One plain dict per point, shared by the table, JSON and CSV outputs (and the cohort's).

    ``point_ras``/``point_lps`` are the point as given; ``classified_at_ras``/``classified_at_lps`` the
    centre of the classified cube, the centre of the nodule found near the point when
    ``centred_on_nodule`` is true (``Prediction.centre_lps``), else the point itself.

    With ``nodules`` (``measure.measure_nodule`` results, one per point), each row also has
    ``measurement`` (the keys of ``NoduleMeasurement.summary``, or None when no nodule was found,
    the reason among the warnings), ``measurement_details`` and ``segmentation`` (the label map's
    file, or None); without, no measurement keys at all.
    """
    rows = []
    segmentation_files = segmentation_files or {}
    for index, (point, prediction) in enumerate(zip(points, predictions)):
        rows.append({
            "label": point.label,
            # + 0.0 turns the -0.0 of a sign flip into 0.0
            "point_ras": [float(v) + 0.0 for v in point.point_ras],
            "point_lps": [float(v) + 0.0 for v in point.point_lps],
            "classified_at_ras": [float(v) * sign + 0.0 for v, sign in zip(prediction.centre_lps, (-1, -1, 1))],
            "classified_at_lps": [float(v) + 0.0 for v in prediction.centre_lps],
            "centred_on_nodule": bool(prediction.centred),
            "probability": float(prediction.probability),
            "uncertainty": None if math.isnan(prediction.uncertainty) else float(prediction.uncertainty),
            "outside_fraction": float(prediction.outside_fraction),
            "logit": float(prediction.logit),
            "warnings": list(prediction.warnings),
            "saliency": str(saliency_files[index]) if index in saliency_files else None,
        })
        if nodules is not None:
            nodule, row = nodules[index], rows[-1]
            row["warnings"] += [w for w in nodule.warnings if w not in row["warnings"]]
            row["measurement"] = None if nodule.measurement is None else nodule.measurement.summary()
            row["measurement_details"] = None if nodule.measurement is None else nodule.measurement.details()
            row["segmentation"] = str(segmentation_files[index]) if index in segmentation_files else None
    return rows


def results_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A fixed-width text table: point, R, A, S, probability, uncertainty, outside, the measurement
    columns (when measured), warnings."""
    measured = any("measurement" in row for row in rows)
    header = ["Point", "R (mm)", "A (mm)", "S (mm)", "Classified at", "Probability", "Uncertainty", "Outside"]
    if measured:
        header += ["Long x short (mm)", "Mean (mm)", "Volume (mm3)", "Type", "Size-only", "Lung-RADS"]
    header.append("Warnings")
    body = []
    for row in rows:
        r, a, s = row["point_ras"]
        uncertainty = "n/a (no TTA)" if row["uncertainty"] is None else f"±{row['uncertainty']:.3f}"
        line = [row["label"], f"{r:.1f}", f"{a:.1f}", f"{s:.1f}", _classified_at(row), f"{row['probability']:.3f}", uncertainty,
                f"{row['outside_fraction']:.0%}"]
        if measured:
            line += _measurement_cells(row.get("measurement"))
        body.append(line + ["; ".join(row["warnings"]) or "-"])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header) - 1)]
    lines = []
    for line in [header] + body:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:-1], widths[1:])]
        lines.append("  ".join(cells + [line[-1]]))
    return "\n".join(lines)


def _classified_at(row: Dict[str, Any]) -> str:
    """The table's "Classified at" cell: the found nodule's centre (and how far from the point), or the point."""
    if not row["centred_on_nodule"]:
        return "the point"
    shift = math.dist(row["classified_at_lps"], row["point_lps"])
    return f"centre, {shift:.1f} mm off"


def _measurement_cells(m: Optional[Dict[str, Any]]) -> List[str]:
    if m is None:
        return ["no nodule", "-", "-", "-", "-", "-"]
    size_only = m["size_only_probability"]
    return [f"{m['long_axis_mm']:.1f} x {m['short_axis_mm']:.1f}", f"{m['mean_diameter_mm']:.1f}", f"{m['volume_mm3']:.0f}",
            m["type"], "n/a" if size_only is None else f"{size_only:.3f}", m["lung_rads"]]


def size_only_note(card: ModelCard) -> str:
    """What the size-only probability is, or that the model's card has none."""
    if card.size_only is None:
        return ("This model's card has no size-only model: no size-only probability. Add one with `nadtrain sizeonly "
                "--add-to CARD --version NEW`, or export with `nadtrain export --size-only Training/results/size-only.json`; "
                "the bundled model's card has one.")
    return "Size-only: the probability from the long axis alone (the model card's logistic reference)."


def measurement_note(card: ModelCard) -> str:
    """The line printed under a table with measurements: what was measured and what the references are."""
    from .references import LUNG_RADS_STATEMENT

    return f"{MEASUREMENT_NOTE} {size_only_note(card)} {LUNG_RADS_STATEMENT}"


def model_summary(classifier) -> Dict[str, Any]:
    """The model's identity as outputs record it: name, version, the loaded file and its sha256 (what
    ``--model-sha256`` pins), threshold."""
    card = classifier.card
    block = card.onnx if classifier.runtime == "onnxruntime" else card.weights  # None: a model not exported yet
    return {"name": card.name, "version": card.version, "file": block and block.file,
            "sha256": block and block.sha256, "threshold": card.threshold}


def results_document(rows, classifier, ct: str, tta: bool) -> Dict[str, Any]:
    """The ``--json`` document of one CT: reminder, CT, model, runtime, device, TTA, the rows (and, when
    measured, what the references are)."""
    document = {
        "disclaimer": REMINDER,
        "ct": str(ct),
        "model": model_summary(classifier),
        "runtime": classifier.runtime,
        "device": classifier.device_description,
        "tta": tta,
        "points": list(rows),
    }
    if any("measurement" in row for row in rows):
        from .references import LUNG_RADS_STATEMENT

        card = classifier.card
        document["measurement_notes"] = {"lung_rads": LUNG_RADS_STATEMENT, "size_only": size_only_note(card),
                                         "size_only_model": card.size_only}
    return document


def csv_cells(row: Dict[str, Any]) -> List[str]:
    """The cells of one row under :data:`CSV_COLUMNS`; floats at full (round-trip) precision."""
    cells = [row["label"], *(repr(float(v)) for v in row["point_ras"]), repr(row["probability"]),
             "" if row["uncertainty"] is None else repr(row["uncertainty"]),
             repr(row["outside_fraction"]), "; ".join(row["warnings"]), row["saliency"] or "",
             *(repr(float(v)) for v in row["classified_at_ras"]), str(row["centred_on_nodule"]).lower()]
    m = row.get("measurement")
    if m is None:
        return cells + [""] * (len(MEASUREMENT_CSV_COLUMNS) - 1) + [row.get("segmentation") or ""]
    return cells + [repr(float(v)) for v in m["centre_lps"]] + [
        "" if m[key] is None else str(m[key]) for key in MEASUREMENT_CSV_COLUMNS[3:-1]] + [row.get("segmentation") or ""]


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
                        progress: bool = True, centres_lps: Optional[Sequence] = None) -> Dict[int, Path]:
    """Write one saliency NRRD per point into ``directory``, of the cube centred on ``centres_lps`` (where
    each point was classified; default the points); returns {point index: path}."""
    import SimpleITK as sitk

    from .errors import InputError

    folder = prepare_folder(directory, "saliency")
    written: Dict[int, Path] = {}
    centres = [p.point_lps for p in points] if centres_lps is None else list(centres_lps)
    for index, point in enumerate(progress_bar(points, desc="Saliency maps", unit="map", disable=not progress)):
        saliency = classifier.saliency(image, centres[index])
        path = folder / f"{index + 1:02d}-{safe_name(point.label)}-saliency.nrrd"
        try:
            sitk.WriteImage(saliency, str(path), True)
        except RuntimeError:
            raise InputError(f"Cannot write {path}; check that the folder is writable and has space.") from None
        written[index] = path
    return written


def write_segmentations(nodules: Sequence, points: Sequence, directory: str | Path) -> Dict[int, Path]:
    """Write each found nodule's label map (NRRD on a crop of the CT's grid; 1 ground glass, 2 solid
    component) into ``directory``, named like the saliency maps; returns {point index: path}."""
    import SimpleITK as sitk

    from .errors import InputError

    folder = prepare_folder(directory, "segmentation")
    written: Dict[int, Path] = {}
    for index, (point, nodule) in enumerate(zip(points, nodules)):
        if nodule.mask is None:
            continue
        path = folder / f"{index + 1:02d}-{safe_name(point.label)}-segmentation.nrrd"
        try:
            sitk.WriteImage(nodule.mask, str(path), True)
        except RuntimeError:
            raise InputError(f"Cannot write {path}; check that the folder is writable and has space.") from None
        written[index] = path
    return written


def safe_name(label: str) -> str:
    """A label as a file-name part: letters, digits, dot, dash and underscore only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "point"
