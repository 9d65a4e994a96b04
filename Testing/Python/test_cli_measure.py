"""The command line's measurements: the JSON `measurement` object, the CSV columns, the table, the
label-map files of --segmentation and --no-measure, on the synthetic chest with a small random model."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import save_random_model
from notadiagnosis.cli import main
from notadiagnosis.results import MEASUREMENT_CSV_COLUMNS
from notadiagnosis.finder import NO_NODULE_WARNING
from notadiagnosis.measure import SUMMARY_KEYS
from notadiagnosis.synthetic import make_synthetic_chest_ct


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("model"), seed=5)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    image, nodules = make_synthetic_chest_ct(seed=0)
    path = tmp_path_factory.mktemp("ct") / "chest.nrrd"
    sitk.WriteImage(image, str(path), True)
    return path, image, nodules


def lps_text(point) -> str:
    return ",".join(f"{v:g}" for v in point)


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


AIR_POINT_LPS = (-70.0, 8.0, 5.0)  # the middle of the right lung, far from every nodule and vessel


def test_json_gives_each_point_a_measurement_with_exactly_the_documented_keys(capsys, chest, model_path, tmp_path):
    path, image, nodules = chest
    code, out, _ = run(capsys, "classify", path, "--lps", "--point", lps_text(nodules[1]["center_lps"]),
                       "--point", lps_text(AIR_POINT_LPS), "--model", model_path, "--device", "cpu", "--json",
                       "--no-tta", "--segmentation", tmp_path / "masks")
    assert code == 0
    document = json.loads(out)
    found, air = document["points"]
    assert list(found["measurement"]) == list(SUMMARY_KEYS)
    m = found["measurement"]
    assert m["type"] == "solid" and m["solid_mean_diameter_mm"] is None and m["lung_rads"] == "4B"
    assert np.linalg.norm(np.array(m["centre_lps"]) - np.array(nodules[1]["center_lps"])) < 1.5
    # The random model's card has no size-only block (as models exported before it existed): none, and said so.
    assert m["size_only_probability"] is None
    assert "no size-only model" in document["measurement_notes"]["size_only"]
    assert air["measurement"] is None and NO_NODULE_WARNING.format(radius=10) in air["warnings"]
    assert "Lung-RADS also depends on history" in document["measurement_notes"]["lung_rads"]
    # One label map per found nodule, named like the saliency maps, on the CT's grid.
    assert found["segmentation"].endswith("01-P1-segmentation.nrrd") and air["segmentation"] is None
    mask = sitk.ReadImage(found["segmentation"])
    assert mask.GetSpacing() == pytest.approx(image.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1, 2}
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["01-P1-segmentation.nrrd"]


def test_csv_carries_the_measurement_columns_and_empty_cells_without_a_nodule(capsys, chest, model_path):
    path, _, nodules = chest
    code, out, _ = run(capsys, "classify", path, "--lps", "--point", lps_text(nodules[2]["center_lps"]),
                       "--point", lps_text(AIR_POINT_LPS), "--model", model_path, "--device", "cpu", "--csv", "--no-tta")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO("".join(line + "\n" for line in out.splitlines() if not line.startswith("#")))))
    assert all(column in rows[0] for column in MEASUREMENT_CSV_COLUMNS)
    assert rows[0]["type"] == "ground-glass" and rows[0]["lung_rads"] == "2" and float(rows[0]["mean_diameter_mm"]) > 10
    assert rows[1]["type"] == "" and rows[1]["long_axis_mm"] == ""


def test_table_shows_the_measurement_and_no_measure_leaves_it_out(capsys, chest, model_path):
    path, _, nodules = chest
    args = ["classify", path, "--lps", "--point", lps_text(nodules[0]["center_lps"]), "--model", model_path,
            "--device", "cpu", "--no-tta"]
    code, out, _ = run(capsys, *args)
    header = next(line for line in out.splitlines() if line.startswith("Point"))
    assert code == 0 and "Lung-RADS" in header and "Size-only" in header and "Long x short (mm)" in header
    code, out, _ = run(capsys, *args, "--no-measure")
    header = next(line for line in out.splitlines() if line.startswith("Point"))
    assert code == 0 and "Lung-RADS" not in header and "Lung-RADS also depends" not in out
    code, out, _ = run(capsys, *args, "--no-measure", "--json")
    assert "measurement" not in json.loads(out)["points"][0]


def test_segmentation_without_measuring_is_refused(capsys, chest, model_path, tmp_path):
    path, _, nodules = chest
    code, _, err = run(capsys, "classify", path, "--lps", "--point", lps_text(nodules[0]["center_lps"]),
                       "--model", model_path, "--device", "cpu", "--no-measure", "--segmentation", tmp_path)
    assert code == 1 and "--segmentation needs the measurements" in err
