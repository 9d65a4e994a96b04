"""`nadtrain build SOURCE --out DIR`: build a patch dataset from one pixel source, in parallel, resumable.

Each source module in ``nadtrain.sources`` defines ``configure_parser(parser)`` (its options) and
``build(args) -> dict`` (a summary). The shared machinery: a pool of spawned worker processes
fed task by task (``parallel.run_tasks``; the parent is the only writer of the dataset), a progress
bar, and resume: the dataset writer reports which samples exist and sources skip them.
"""
from __future__ import annotations

import argparse
import importlib
import time

from .parallel import default_workers

SOURCES = {
    "lidc": ("nadtrain.sources.lidc", "real LIDC-IDRI CT: the patch at each labelled nodule's centroid"),
    "insertion": ("nadtrain.sources.insertion",
                  "virtual insertion of every labelled nodule's real contours into real chest CT backgrounds"),
    "medmnist": ("nadtrain.sources.medmnist", "MedMNIST NoduleMNIST3D (nodulemnist3d_64.npz), with its own split"),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True
    for name, (module_name, help_text) in SOURCES.items():
        module = importlib.import_module(module_name)
        sub = sources.add_parser(name, help=help_text, description=help_text + ".")
        sub.add_argument("--out", required=True, help="dataset directory (resumed if it holds an interrupted build of the same options)")
        sub.add_argument("--workers", type=int, default=default_workers(), help="worker processes (default: all CPUs)")
        sub.add_argument("--overwrite", action="store_true", help="delete a dataset of other options in --out first")
        sub.add_argument("--limit", type=int, default=None, help="only the first N nodules (quick tests)")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        module.configure_parser(sub)
        sub.set_defaults(_build=module.build)


def run_cli(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    summary = args._build(args)
    seconds = time.perf_counter() - start
    parts = ", ".join(f"{key} {value}" for key, value in summary.items())
    print(f"built {args.source} dataset {args.out}: {parts}; {seconds:.1f} s with {args.workers} worker(s)")
    return 0
