"""Cohort benchmark: one `classify --manifest` run vs separate `classify` calls, in one run. Prints
figures, asserts nothing (machines are noisy).

20 CTs x 5 points by default, each CT in a fresh process of its own vs all of them in one cohort
process (model loaded once, the next CTs read by worker processes while one is classified). The
CTs are the real CTs in ../shared when present (the chest CT as NRRD and LIDC-IDRI-0001 as a DICOM
folder, alternately, each under its own name), else synthetic chest CTs. Both runs use the same
points, and their probabilities are compared.

    python Testing/Benchmarks/benchmark_cohort.py [--cts 20] [--points 5] [--workers 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from notadiagnosis.readers import read_ct

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("NOTADIAGNOSIS_SHARED", REPO.parent / "shared"))
SHARED_CTS = [SHARED / "data/chest_ct/cptac-C3N-00247.nrrd", SHARED / "data/lidc/LIDC-IDRI-0001"]
COMMAND = [sys.executable, "-m", "notadiagnosis.cli"]


def make_cts(folder: Path, count: int) -> list:
    """``count`` CT paths under ``folder``: links to the real CTs when present, else synthetic NRRDs."""
    sources = [path for path in SHARED_CTS if path.exists()]
    paths = []
    for index in range(count):
        if sources:
            source = sources[index % len(sources)]
            target = folder / f"ct{index:02d}{''.join(source.suffixes)}"
            target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
        else:
            from notadiagnosis.synthetic import make_synthetic_chest_ct

            image, _ = make_synthetic_chest_ct(seed=index)
            target = folder / f"ct{index:02d}.nrrd"
            sitk.WriteImage(image, str(target), True)
        paths.append(target)
    return paths


def points_ras(path: Path, count: int, seed: int) -> list:
    """``count`` random points (RAS mm) in the central 60 % of the CT along each axis."""
    image = read_ct(path)
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize())
    indices = rng.uniform(0.2, 0.8, size=(count, 3)) * (size - 1)
    lps = [image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in indices]
    return [(-x, -y, z) for x, y, z in lps]


def probabilities(csv_text: str) -> list:
    rows = csv.DictReader(line for line in io.StringIO(csv_text) if not line.startswith("#"))
    return [float(row["probability"]) for row in rows if row.get("status", "ok") == "ok"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cts", type=int, default=20)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        cts = make_cts(folder, args.cts)
        points = {ct: points_ras(ct, args.points, seed) for seed, ct in enumerate(cts)}
        manifest = folder / "cohort.csv"
        with manifest.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "ct", "points"])
            for ct in cts:
                writer.writerow([ct.stem, ct.name, "; ".join(",".join(repr(v) for v in p) for p in points[ct])])
        load = os.getloadavg()
        print(f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs; load average {load[0]:.1f} "
              f"(1 min), {load[1]:.1f} (5 min) at the start")
        kinds = sorted({"DICOM folder" if ct.is_dir() else "".join(ct.suffixes) for ct in cts})
        print(f"{args.cts} CTs ({', '.join(kinds)}) x {args.points} points, flip TTA on, bundled model, CPU\n")

        separate_outputs, separate_times = [], []
        start = time.perf_counter()
        for ct in cts:
            call = COMMAND + ["classify", str(ct), "--csv", "--device", "cpu"]
            for point in points[ct]:
                call.append("--point=" + ",".join(repr(v) for v in point))
            began = time.perf_counter()
            result = subprocess.run(call, capture_output=True, text=True, check=True)
            separate_times.append(time.perf_counter() - began)
            separate_outputs.extend(probabilities(result.stdout))
        separate_s = time.perf_counter() - start

        out = folder / "results.csv"
        start = time.perf_counter()
        subprocess.run(COMMAND + ["classify", "--manifest", str(manifest), "--out", str(out), "--device", "cpu",
                                  "--workers", str(args.workers)], capture_output=True, text=True, check=True)
        cohort_s = time.perf_counter() - start
        cohort_outputs = probabilities(out.read_text())

    difference = float(np.max(np.abs(np.array(cohort_outputs) - np.array(separate_outputs))))
    figures = {
        "cts": args.cts, "points_per_ct": args.points, "workers": args.workers,
        "separate_calls_s": round(separate_s, 2), "separate_per_ct_s": round(separate_s / args.cts, 3),
        "separate_per_ct_min_max_s": [round(min(separate_times), 3), round(max(separate_times), 3)],
        "cohort_s": round(cohort_s, 2), "cohort_per_ct_s": round(cohort_s / args.cts, 3),
        "ratio": round(separate_s / cohort_s, 2), "max_probability_difference": difference,
        "load_average_at_start": [round(v, 2) for v in load],
    }
    print(f"{'':<34}{'total s':>10}{'s per CT':>10}")
    print(f"{f'{args.cts} separate classify calls':<34}{separate_s:>10.1f}{separate_s / args.cts:>10.2f}")
    print(f"{'one cohort run (--manifest)':<34}{cohort_s:>10.1f}{cohort_s / args.cts:>10.2f}")
    print(f"\nratio (separate / cohort): {figures['ratio']:.2f}x")
    print(f"largest probability difference between the two: {difference:.2e}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
