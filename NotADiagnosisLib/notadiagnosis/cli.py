"""The ``notadiagnosis`` command line: ``classify``, ``info`` and ``demo``.

User mistakes (a missing file, a point outside the CT, no model) end with one sentence on stderr
and a non-zero exit status, never a traceback; programming errors still raise. The runtime (ONNX
Runtime, or torch when asked for) is imported only by the commands that need it, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import __version__
from .errors import InputError, NoDefaultModelError, NotADiagnosisError, PointOutsideImageError
from .geometry import is_inside, lps_to_ras
from .runtime import RUNTIMES

# Also in weights.DISCLAIMER; repeated here so that `--help` and errors need not import the runtime.
REMINDER = "Not a diagnosis: research use only; the model has not been validated on patients."
EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 130, 141
DEMO_CT_NAME = "synthetic-chest-ct.nrrd"
DEMO_POINTS_NAME = "synthetic-nodules.mrk.json"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``notadiagnosis`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_points(sys.argv[1:] if argv is None else list(argv)))
    try:
        return int(args.run(args) or EXIT_OK)
    except NotADiagnosisError as error:
        print(f"notadiagnosis: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("notadiagnosis: interrupted; the run is incomplete and no results were printed.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): stop quietly, as command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


_NUMERIC_TRIPLE = re.compile(r"^\s*-[\d.][^,]*(,[^,]*){2}$")


def _join_negative_points(argv: List[str]) -> List[str]:
    """Let ``--point -12,30,5`` work: argparse would take a value starting with '-' for an option."""
    joined: List[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--point" and index + 1 < len(argv) and _NUMERIC_TRIPLE.match(argv[index + 1]):
            joined.append(f"--point={argv[index + 1]}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notadiagnosis",
        description="Lung nodule malignancy second opinion for research (3D ResNet on the 64 mm cube around a point). "
        + REMINDER,
    )
    parser.add_argument("--version", action="version", version=f"notadiagnosis {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True

    classify = commands.add_parser(
        "classify",
        help="classify nodules at points of a CT",
        description="Classify the nodule at each point of a CT. Points are RAS millimetres (what Slicer shows) "
        "unless --lps is given; Slicer point files carry their own coordinate system. " + REMINDER,
    )
    classify.add_argument("ct", metavar="CT", help="CT volume file (.nrrd, .nii.gz, .mha) or DICOM folder")
    classify.add_argument("--point", action="append", default=[], metavar="R,A,S",
                          help="a point in mm (repeat for several); RAS unless --lps")
    classify.add_argument("--points", action="append", default=[], metavar="FILE",
                          help="points file: Slicer .mrk.json or .fcsv, or CSV with x,y,z / r,a,s / l,p,s columns")
    classify.add_argument("--lps", action="store_true",
                          help="--point values and CSV x,y,z columns are LPS (DICOM/ITK) instead of RAS")
    classify.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when the DICOM folder holds several")
    output = classify.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print results as JSON")
    output.add_argument("--csv", action="store_true", help="print results as CSV (label,r,a,s,...)")
    classify.add_argument("--saliency", metavar="DIR", help="write one saliency map (NRRD, CT space) per point into DIR")
    _add_model_arguments(classify)
    classify.add_argument("--no-tta", action="store_true", help="switch off flip test-time augmentation (no uncertainty)")
    classify.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="points per batch (default 32)")
    classify.set_defaults(run=run_classify)

    info = commands.add_parser("info", help="load the model; print its card, the runtime, execution provider and versions")
    _add_model_arguments(info)
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(run=run_info)

    demo = commands.add_parser(
        "demo",
        help="build a synthetic chest CT, classify its nodules, write saliency maps (no network)",
        description="Build a synthetic chest CT with four nodules of different kinds, write it as NRRD with a "
        "Slicer point list of the nodules, classify each nodule and write saliency maps. " + REMINDER,
    )
    demo.add_argument("--out", default="demo-output", metavar="DIR", help="output folder (default ./demo-output)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic CT (default 0)")
    _add_model_arguments(demo)
    demo.set_defaults(run=run_demo)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH",
                        help="model card (.json), or its .onnx or .safetensors file; default: the bundled model")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="auto (default: ONNX Runtime when installed, else torch), onnx or torch")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "gpu", "mps"),
                        help="compute device (default auto: a CUDA GPU when the runtime has one, then Apple MPS "
                             "on torch, else the CPU)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads of the runtime (default: ONNX Runtime 1, chosen by measurement; torch its own)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# ------------------------------------------------------------------------------------------ classify


def run_classify(args: argparse.Namespace) -> int:
    from .readers import read_ct

    points = collect_points(args.point, args.points, lps=args.lps)
    classifier = load_classifier(args)  # before reading the CT: fail fast without a model
    image = read_ct(args.ct, series_uid=args.series, progress=True)
    check_points_inside(image, points)
    predictions = classifier.predict(image, [p.point_lps for p in points], batch_size=args.batch_size,
                                     tta=not args.no_tta, progress=True)
    saliency_files = write_saliency_maps(classifier, image, points, args.saliency) if args.saliency else {}
    rows = result_rows(points, predictions, saliency_files)
    if args.json:
        print(json.dumps(results_document(rows, classifier, args.ct, tta=not args.no_tta), indent=2))
    elif args.csv:
        sys.stdout.write(results_csv(rows))
        print(REMINDER, file=sys.stderr)
    else:
        print(f"CT: {args.ct} ({describe_image(image)})")
        print(f"Model: {classifier.name} on {classifier.device_description}; flip TTA {'off' if args.no_tta else 'on'}")
        print()
        print(results_table(rows))
        if saliency_files:
            print(f"\nSaliency maps (NRRD, CT space): {Path(args.saliency).resolve()}")
        print(f"\n{REMINDER}")
    return EXIT_OK


def collect_points(point_args: Sequence[str], point_files: Sequence[str], lps: bool) -> list:
    """Points from ``--point`` values and ``--points`` files, in LPS, in the order given."""
    from .readers import parse_point, read_points

    points = [parse_point(text, lps=lps, label=f"P{i}") for i, text in enumerate(point_args, start=1)]
    for file in point_files:
        points.extend(read_points(file, coordinate_system="LPS" if lps else None))
    if not points:
        raise InputError("No points were given; pass --point R,A,S (repeatable) or --points FILE.")
    return points


def load_classifier(args: argparse.Namespace):
    """Load ``--model`` (or the bundled default) on ``--runtime``, ``--device`` and ``--threads``."""
    from .classifier import Classifier

    model = args.model
    if model is not None and not (Path(model).exists() or Path(model).with_suffix(".json").exists()):
        raise InputError(f"The model {model} does not exist; give the model's .json card, or its .onnx or .safetensors file.")
    return Classifier.load(model, device=args.device, runtime=args.runtime, threads=args.threads)


def check_points_inside(image, points: Sequence) -> None:
    """Refuse, by label, the first point that lies outside the CT, saying where the CT is (RAS)."""
    for point in points:
        if not is_inside(image, point.point_lps):
            r, a, s = point.point_ras
            raise PointOutsideImageError(
                f"Point {point.label} (RAS {r:.1f}, {a:.1f}, {s:.1f} mm) lies outside the CT, which spans "
                f"{ras_extent(image)}; check the coordinates and whether they are RAS or LPS (--lps)."
            )


def ras_extent(image) -> str:
    """The CT's bounding box in RAS mm as readable text."""
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[0, n] for n in size])).reshape(3, -1).T]
    ras = lps_to_ras(np.array(corners))
    low, high = ras.min(axis=0), ras.max(axis=0)
    return ", ".join(f"{axis} {lo:.0f} to {hi:.0f}" for axis, lo, hi in zip("RAS", low, high))


def describe_image(image) -> str:
    size = "x".join(str(n) for n in image.GetSize())
    spacing = "x".join(f"{s:.2f}" for s in image.GetSpacing())
    return f"{size} voxels, {spacing} mm"


def write_saliency_maps(classifier, image, points: Sequence, directory: str) -> Dict[int, Path]:
    """Write one saliency NRRD per point into ``directory``; returns {point index: path}."""
    import SimpleITK as sitk

    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"Cannot create the saliency folder {folder} ({error.strerror}); choose a writable folder.") from None
    written: Dict[int, Path] = {}
    for index, point in enumerate(_progress_bar(points, desc="Saliency maps", unit="map")):
        saliency = classifier.saliency(image, point.point_lps)
        path = folder / f"{index + 1:02d}-{_safe_name(point.label)}-saliency.nrrd"
        try:
            sitk.WriteImage(saliency, str(path), True)
        except RuntimeError:
            raise InputError(f"Cannot write {path}; check that the folder is writable and has space.") from None
        written[index] = path
    return written


def _progress_bar(iterable=None, **options):
    """A tqdm bar on stderr that appears only for work that lasts over a second."""
    from tqdm.auto import tqdm

    return tqdm(iterable, delay=1.0, leave=False, **options)  # delay needs tqdm >= 4.62


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "point"


def result_rows(points: Sequence, predictions: Sequence, saliency_files: Dict[int, Path]) -> List[Dict[str, Any]]:
    """One plain dict per point, shared by the table, JSON and CSV outputs."""
    rows = []
    for index, (point, prediction) in enumerate(zip(points, predictions)):
        rows.append({
            "label": point.label,
            "point_ras": [round(float(v), 3) for v in point.point_ras],
            "point_lps": [round(float(v), 3) for v in point.point_lps],
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


def results_document(rows, classifier, ct: str, tta: bool) -> Dict[str, Any]:
    card = classifier.card
    return {
        "disclaimer": REMINDER,
        "ct": str(ct),
        "model": {"name": card.get("name"), "version": card.get("version"),
                  "sha256": card.get("weights", {}).get("sha256"), "threshold": card.get("threshold")},
        "runtime": classifier.runtime,
        "device": classifier.device_description,
        "tta": tta,
        "points": list(rows),
    }


def results_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """CSV with r,a,s columns, so the output can be read back as a points file.

    Its first line is the reminder as a ``#`` comment, so a saved file carries it (the points reader,
    and pandas with ``comment="#"``, skip it).
    """
    buffer = io.StringIO()
    buffer.write(f"# {REMINDER}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "r", "a", "s", "probability", "uncertainty", "outside_fraction", "warnings", "saliency"])
    for row in rows:
        writer.writerow([row["label"], *(f"{v:.3f}" for v in row["point_ras"]), f"{row['probability']:.6f}",
                         "" if row["uncertainty"] is None else f"{row['uncertainty']:.6f}",
                         f"{row['outside_fraction']:.4f}", "; ".join(row["warnings"]), row["saliency"] or ""])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- info


def run_info(args: argparse.Namespace) -> int:
    import importlib.metadata

    import SimpleITK as sitk

    versions = {"notadiagnosis": __version__, "python": platform.python_version()}
    for package in ("onnxruntime", "onnxruntime-gpu", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions |= {"SimpleITK": sitk.Version_VersionString(), "numpy": np.__version__}
    classifier, model_note = None, None
    try:
        classifier = load_classifier(args)  # loads and verifies the model: the runtime and provider are the ones that ran
        model_note = str(Path(args.model) if args.model else "the bundled default model")
    except NoDefaultModelError as error:
        model_note = str(error)
    card = classifier.card if classifier else None
    runtime = classifier.runtime if classifier else None
    device = classifier.device_description if classifier else None
    if args.json:
        print(json.dumps({"versions": versions, "runtime": runtime, "device": device,
                          "model_path": model_note if card else None, "model_card": card,
                          "note": None if card else model_note, "disclaimer": REMINDER}, indent=2))
        return EXIT_OK
    print("Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    if card is None:
        print(f"Model: none. {model_note}")
    else:
        print(f"Runtime: {runtime}")
        print(f"Device: {device}")
        print(f"Model: {card.get('name')} {card.get('version')} ({model_note}; verified)")
        print("Model card:")
        print(json.dumps(card, indent=2))
    print(REMINDER)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- demo


def run_demo(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .readers import LabelledPoint, write_markups_json
    from .synthetic import make_synthetic_chest_ct

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"Cannot create the output folder {out} ({error.strerror}); pass a writable --out DIR.") from None
    steps = _progress_bar(total=2, desc="Synthetic chest CT", unit="step")
    image, nodules = make_synthetic_chest_ct(seed=args.seed)
    steps.update(1)
    ct_path, points_path = out / DEMO_CT_NAME, out / DEMO_POINTS_NAME
    points = [LabelledPoint(label=n["name"], point_lps=tuple(n["center_lps"])) for n in nodules]
    try:
        sitk.WriteImage(image, str(ct_path), True)
        write_markups_json(points_path, points, name="SyntheticNodules")
    except (RuntimeError, OSError):
        raise InputError(f"Cannot write into {out}; pass a writable --out DIR.") from None
    steps.update(1)
    steps.close()
    print(f"Synthetic chest CT ({describe_image(image)}): {ct_path.resolve()}")
    print(f"Nodule points (Slicer point list, LPS): {points_path.resolve()}")
    try:
        classifier = load_classifier(args)
    except NoDefaultModelError:
        print(
            "\nNo default model is bundled with this version of notadiagnosis yet, so NOTHING WAS CLASSIFIED: "
            "the demo stops after writing the CT and its points.\nWith a model of your own, run:\n"
            f"  notadiagnosis classify {ct_path} --points {points_path} --model PATH --saliency {out / 'saliency'}"
        )
        print(f"\n{REMINDER}")
        return EXIT_OK
    predictions = classifier.predict(image, [p.point_lps for p in points], tta=True, progress=True)
    saliency_files = write_saliency_maps(classifier, image, points, str(out / "saliency"))
    rows = result_rows(points, predictions, saliency_files)
    for row, nodule in zip(rows, nodules):
        row["kind"], row["diameter_mm"] = nodule["kind"], nodule["diameter_mm"]
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results_document(rows, classifier, str(ct_path), tta=True), indent=2) + "\n",
                            encoding="utf-8")
    print(f"Model: {classifier.name} on {classifier.device_description}; flip TTA on\n")
    print(results_table(rows))
    print(f"\nSaliency maps (NRRD, CT space): {(out / 'saliency').resolve()}")
    print(f"Results (JSON): {results_path.resolve()}")
    print("The CT is synthetic: these numbers show the pipeline runs, they say nothing about accuracy.")
    print(f"\n{REMINDER}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
