"""The ``notadiagnosis`` command line: ``classify`` (one CT, or a cohort from a manifest), ``info`` and ``demo``.

User mistakes (a missing file, a point outside the CT, no model) end with one sentence on stderr
and a non-zero exit status, never a traceback; programming errors still raise. Inputs are checked
before the model is loaded (``classify`` loads it on a thread of its own while the CT's pixels are
read, and a CT's error still comes first), and the inference runtime is imported only by the commands
that need it, so ``--help`` and input mistakes stay fast.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple, TypeVar

import numpy as np

from . import __version__
from .errors import InputError, NoDefaultModelError, NotADiagnosisError, show_warning
from .results import (
    REMINDER,
    measurement_note,
    prepare_folder,
    results_csv,
    results_document,
    results_table,
)
from .progress import progress_bar
from .runtime import DEVICE_CHOICES, RUNTIMES

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 130, 141
# A cohort run that wrote every row but some CTs failed (their reasons are in the results file): not 0, so a
# job array or a pipeline notices; not 1, which means nothing was done.
EXIT_CTS_FAILED = 3
# Output that could not be written out at the end (Python's own status when it cannot flush stdout at exit).
EXIT_OUTPUT_FAILED = 120
DEMO_CT_NAME = "synthetic-chest-ct.nrrd"
DEMO_POINTS_NAME = "synthetic-nodules.mrk.json"
T, U = TypeVar("T"), TypeVar("U")


def entry_point() -> NoReturn:
    """The ``notadiagnosis`` console script and ``python -m notadiagnosis``: :func:`main` on the command line's
    arguments, then the process ends at once with its status.

    Once the output is flushed nothing is left to do, and the interpreter's teardown (freeing every object,
    SimpleITK's, ITK's and ONNX Runtime's destructors) took 70-90 ms of a one-point ``classify`` (measured;
    as mypy does, the command skips it). Every file the command writes is closed by then, and its threads are
    idle. An exception out of :func:`main` (a programming error, argparse's exits) ends the process as usual.
    """
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        status = EXIT_BROKEN_PIPE  # the reader went away before the last of the output: as main() says it
    except OSError as error:  # e.g. a full disk under `> results.json`: the output is incomplete
        print(f"notadiagnosis: error: the output could not be written ({error.strerror or error}).", file=sys.stderr)
        status = EXIT_OUTPUT_FAILED
    os._exit(status)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (``argv``, or the process's arguments); returns the exit status. Programs and tests call
    this; the installed command calls :func:`entry_point`."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_points(sys.argv[1:] if argv is None else list(argv)))
    check_argument_combinations(parser, args)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.run(args) or EXIT_OK)
    except NotADiagnosisError as error:
        print(f"notadiagnosis: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"notadiagnosis: interrupted; {getattr(args, 'interrupted_note', 'the run is incomplete and no results were printed.')}",
              file=sys.stderr)
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
        help="classify nodules at points of a CT, or of every CT of a cohort (--manifest)",
        description="Classify the nodule at each point of a CT. Points are RAS millimetres (what Slicer shows) "
        "unless --lps is given; Slicer point files carry their own coordinate system. With --manifest, classify "
        "every CT of a cohort in one process into one CSV or JSONL file (--out), resumably. " + REMINDER,
    )
    classify.add_argument("ct", metavar="CT", nargs="?", help="CT volume file (.nrrd, .nii.gz, .mha) or DICOM folder")
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
    classify.add_argument("--segmentation", metavar="DIR",
                          help="write one nodule label map (NRRD on the CT's grid; 1 ground glass, 2 solid) per point into DIR")
    classify.add_argument("--no-measure", action="store_true",
                          help="do not find, segment and measure the nodule at each point (measured by default)")
    classify.add_argument("--at-click", action="store_true",
                          help="classify the cube centred on each point as given, not on the centre of the nodule found "
                               "near it (the default; at the click the answer moves with where the point was placed)")
    _add_model_arguments(classify)
    classify.add_argument("--no-tta", action="store_true", help="switch off flip test-time augmentation (no uncertainty)")
    classify.add_argument("--batch-size", type=_whole_number(1), default=32, metavar="N", help="points per batch (default 32)")
    cohort = classify.add_argument_group(
        "cohort mode", "one row per CT in a CSV manifest (columns ct, points; optional id, series, coordinates); "
        "see the README")
    cohort.add_argument("--manifest", metavar="CSV", help="classify every CT listed in this manifest instead of one CT")
    cohort.add_argument("--out", metavar="FILE", help="results file of the cohort, .csv or .jsonl; a rerun resumes it")
    cohort.add_argument("--shard", type=_shard, metavar="K/N", help="only this shard's rows: every N-th row from the K-th (1 <= K <= N)")
    cohort.add_argument("--workers", type=_whole_number(0), default=2, metavar="N",
                        help="processes reading the next CTs while one is classified (default 2; 0: read in this process)")
    classify.set_defaults(run=run_classify)

    info = commands.add_parser("info", help="verify the model; print its card, the runtime, execution provider and versions")
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
    parser.add_argument("--model-sha256", type=_sha256, metavar="HEX",
                        help="refuse the model unless the file the runtime loads has this sha256 (e.g. the one published "
                             "with it): MODEL.onnx on ONNX Runtime, MODEL.safetensors on torch")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="auto (default: ONNX Runtime when installed, else torch), onnx or torch")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="compute device (default auto: a CUDA GPU when the runtime has one, then Apple MPS "
                             "on torch, else the CPU)")
    parser.add_argument("--threads", type=_whole_number(1), metavar="N",
                        help="CPU threads of the runtime (default: ONNX Runtime 2, chosen by measurement; torch its own)")


def check_argument_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage mistakes argparse cannot see alone: one CT or a manifest, and the options each allows."""
    if getattr(args, "run", None) is not run_classify:
        return
    if args.manifest is None:
        if args.ct is None:
            parser.error("give a CT (a volume file or DICOM folder), or a cohort with --manifest CSV --out FILE")
        for name in ("out", "shard"):
            if getattr(args, name) is not None:
                parser.error(f"--{name} belongs to the cohort mode; add --manifest CSV")
        return
    if args.ct is not None:
        parser.error("give either a CT or --manifest, not both")
    if args.out is None:
        parser.error("--manifest needs --out FILE (.csv or .jsonl), where results are written and resumed")
    for name, given in (("--point", args.point), ("--points", args.points), ("--series", args.series),
                        ("--lps", args.lps), ("--json", args.json), ("--csv", args.csv)):
        if given:
            parser.error(f"{name} does not apply with --manifest: each manifest row gives its CT's points, series and "
                         "coordinate system, and --out's suffix the format")


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _shard(text: str) -> tuple:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 1 <= K <= N (e.g. 3/10)")
    return int(match.group(1)), int(match.group(2))


def _sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hexadecimal digits)")
    return text.strip().lower()


# ------------------------------------------------------------------------------------------ classify


def run_classify(args: argparse.Namespace) -> int:
    if args.manifest is not None:
        return run_cohort(args)
    from .cases import classify_case, collect_points, describe_image, read_case

    # The points, the model's path and the options are checked before anything is read or loaded; the model then
    # loads while the CT's pixels are read, and the CT's own errors (headers, pixels, points outside) come first.
    points = collect_points(args.point, args.points, lps=args.lps)
    check_model_path(args.model)
    check_measure_options(args)
    if args.saliency:
        prepare_folder(args.saliency, "saliency")
    if args.segmentation:
        prepare_folder(args.segmentation, "segmentation")
    image, classifier = read_while_loading(
        lambda start_load: read_case(args.ct, args.series, points, progress=True, before_pixels=start_load),
        lambda: load_classifier(args))
    rows = classify_case(classifier, image, points, tta=not args.no_tta, batch_size=args.batch_size,
                         saliency_dir=args.saliency, progress=True, measure=not args.no_measure,
                         segmentation_dir=args.segmentation, at_click=args.at_click)
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
        if args.saliency:
            print(f"\nSaliency maps (NRRD, CT space): {Path(args.saliency).resolve()}")
        if args.segmentation:
            print(f"Nodule label maps (NRRD, CT grid; 1 ground glass, 2 solid): {Path(args.segmentation).resolve()}")
        if not args.no_measure:
            print(f"\n{measurement_note(classifier.card)}")
        print(f"\n{REMINDER}")
    return EXIT_OK


def read_while_loading(read: Callable[[Callable[[], None]], T], load: Callable[[], U]) -> Tuple[T, U]:
    """``read(start_load)`` (the CT) in this thread and ``load()`` (the model) on a thread of its own, begun when
    ``read`` calls ``start_load`` (or when it returns); both results.

    The read calls it when the CT's pixels begin (:func:`.ct_reader.read_ct`): SimpleITK reads them with Python's
    lock released, so on two cores the load (ONNX Runtime's library, the model's sha256, its session) hides
    behind the read. Begun sooner, ONNX Runtime's import, which holds the lock, would stall the threads that read
    the DICOM headers, and a CT refused on its headers would cost a load. Errors come as when the two ran one
    after the other: the read's first (the load's outcome is then dropped), then the load's; either way the
    loading thread has ended before this returns or raises.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="notadiagnosis-load") as pool:
        loading: List[Future] = []

        def start_load() -> None:
            if not loading:
                loading.append(pool.submit(load))

        image = read(start_load)  # on an error, leaving the block waits for a started load, whose outcome is dropped
        start_load()
        return image, loading[0].result()


def check_measure_options(args: argparse.Namespace) -> None:
    """Label maps come from the measurement: refuse --segmentation with --no-measure."""
    if args.no_measure and args.segmentation:
        raise InputError("--segmentation needs the measurements; leave out --no-measure.")


def run_cohort(args: argparse.Namespace) -> int:
    """``classify --manifest``: every CT of the manifest (or of one shard of it) into ``--out``."""
    from .cohort import CohortOptions, classify_cohort

    options = CohortOptions(manifest=Path(args.manifest), out=Path(args.out), shard=args.shard, workers=args.workers,
                            tta=not args.no_tta, batch_size=args.batch_size,
                            saliency=Path(args.saliency) if args.saliency else None, measure=not args.no_measure,
                            segmentation=Path(args.segmentation) if args.segmentation else None, at_click=args.at_click)
    check_measure_options(args)
    check_model_path(args.model)
    args.interrupted_note = f"the CTs finished so far are in {args.out}; rerun the same command to resume."
    summary = classify_cohort(options, lambda: load_classifier(args))
    print(summary)
    print(REMINDER)
    return EXIT_CTS_FAILED if summary.failed else EXIT_OK


def check_model_path(model: Optional[str]) -> None:
    """Refuse, before anything is loaded, a model path that does not exist or is not a model file."""
    if model is not None:
        from .weights import given_model_files

        given_model_files(model)


def load_classifier(args: argparse.Namespace):
    """Load ``--model`` (or the bundled default) on ``--runtime``, ``--device`` and ``--threads``, verified
    (and pinned to ``--model-sha256``)."""
    from .classifier import Classifier

    check_model_path(args.model)
    return Classifier.load(args.model, device=args.device, expected_sha256=args.model_sha256, runtime=args.runtime,
                           threads=args.threads)


# ---------------------------------------------------------------------------------------------- info


def run_info(args: argparse.Namespace) -> int:
    """Versions, device and the model's card; the model is verified as ``classify`` verifies it, so a
    damaged or altered model ends in an error here too."""
    import importlib.metadata

    import SimpleITK as sitk

    from .weights import default_model_path

    versions = {"notadiagnosis": __version__, "python": platform.python_version()}
    for package in ("onnxruntime", "onnxruntime-gpu", "torch"):  # without importing them
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions |= {"SimpleITK": sitk.Version_VersionString(), "numpy": np.__version__}
    classifier, model_note = None, None
    try:
        classifier = load_classifier(args)  # the runtime and execution provider reported are the ones that ran
        model_note = str(Path(args.model) if args.model else default_model_path())
    except NoDefaultModelError as error:
        model_note = str(error)
    card = classifier.card.to_dict() if classifier else None
    runtime = classifier.runtime if classifier else None
    device_description = classifier.device_description if classifier else None
    if args.json:
        print(json.dumps({"versions": versions, "runtime": runtime, "device": device_description,
                          "model_path": model_note if card else None, "model_card": card,
                          "note": None if card else model_note, "disclaimer": REMINDER}, indent=2))
        return EXIT_OK
    print("Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    if card is not None:
        print(f"Runtime: {runtime}")
        print(f"Device: {device_description}")
    if card is None:
        print(f"Model: none. {model_note}")
    else:
        print(f"Model: {classifier.name} ({model_note}; sha256 verified)")
        print("Model card:")
        print(json.dumps(card, indent=2))
    print(REMINDER)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- demo


def run_demo(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .cases import classify_case, describe_image
    from .points import LabelledPoint, write_markups_json
    from .synthetic import make_synthetic_chest_ct

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"Cannot create the output folder {out} ({error.strerror}); pass a writable --out DIR.") from None
    steps = progress_bar(total=2, desc="Synthetic chest CT", unit="step")
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
    rows = classify_case(classifier, image, points, tta=True, saliency_dir=out / "saliency", progress=True,
                         segmentation_dir=out / "segmentation")
    for row, nodule in zip(rows, nodules):
        row["kind"], row["diameter_mm"] = nodule["kind"], nodule["diameter_mm"]
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results_document(rows, classifier, str(ct_path), tta=True), indent=2) + "\n",
                            encoding="utf-8")
    print(f"Model: {classifier.name} on {classifier.device_description}; flip TTA on\n")
    print(results_table(rows))
    print(f"\nSaliency maps (NRRD, CT space): {(out / 'saliency').resolve()}")
    print(f"Nodule label maps (NRRD, CT grid; 1 ground glass, 2 solid): {(out / 'segmentation').resolve()}")
    print(f"Results (JSON): {results_path.resolve()}")
    print(measurement_note(classifier.card))
    print("The CT is synthetic: these numbers show the pipeline runs, they say nothing about accuracy.")
    print(f"\n{REMINDER}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    entry_point()
