"""The `notadiagnosis` command line end to end on generated volumes, with a small random model.

The random model's numbers mean nothing; these tests check that the command line reads, converts,
classifies, writes and reports correctly, and that user mistakes end in one sentence and exit 1.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import save_random_model
from notadiagnosis import Classifier
from notadiagnosis.cli import REMINDER, main
from notadiagnosis.errors import InputError, NoDefaultModelError, WeightsError
from notadiagnosis.measure import measure_nodule
from notadiagnosis.readers import LabelledPoint, read_points, write_markups_json
from notadiagnosis.synthetic import make_synthetic_chest_ct
from notadiagnosis.weights import default_model_path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("model"), seed=3, temperature=1.5)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """The synthetic chest at coarse voxels (fast), written as NRRD; returns (path, image, nodules)."""
    image, nodules = make_synthetic_chest_ct(seed=0, spacing=(1.4, 1.4, 2.5))
    path = tmp_path_factory.mktemp("ct") / "chest.nrrd"
    sitk.WriteImage(image, str(path), True)
    return path, image, nodules


def ras_text(point_lps) -> str:
    x, y, z = point_lps
    return f"{-x:g},{-y:g},{z:g}"


def run_cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_sentence_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("notadiagnosis: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


# --------------------------------------------------------------------------------------- classify


def test_classify_prints_a_table_with_each_point_and_the_reminder(capsys, chest, model_path):
    path, _, nodules = chest
    code, out, _ = run_cli(capsys, "classify", path, "--point", ras_text(nodules[0]["center_lps"]),
                           "--point", ras_text(nodules[2]["center_lps"]), "--model", model_path, "--device", "cpu")
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("Point"))
    for column in ("R (mm)", "A (mm)", "S (mm)", "Probability", "Uncertainty", "Outside", "Warnings"):
        assert column in header
    rows = [line for line in lines if line.startswith("P1 ") or line.startswith("P2 ")]
    assert len(rows) == 2
    r, a, s = (float(v) for v in ras_text(nodules[0]["center_lps"]).split(","))
    assert rows[0].split()[1:4] == [f"{r:.1f}", f"{a:.1f}", f"{s:.1f}"]
    assert lines[-1] == REMINDER and REMINDER.startswith("Not a diagnosis")


def test_json_output_matches_the_library_prediction(capsys, chest, model_path):
    path, image, nodules = chest
    points = [n["center_lps"] for n in nodules]
    args = ["classify", path, "--model", model_path, "--device", "cpu", "--json", "--batch-size", "3"]
    for point in points:
        args += ["--point", ras_text(point)]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    document = json.loads(out)
    assert document["disclaimer"] == REMINDER
    assert document["tta"] is True and document["model"]["name"] == "random-test-model"
    expected = Classifier.load(model_path, device="cpu").predict(image, points)
    assert [p["label"] for p in document["points"]] == ["P1", "P2", "P3", "P4"]
    for row, point, prediction in zip(document["points"], points, expected):
        np.testing.assert_allclose(row["point_lps"], point, atol=1e-3)
        np.testing.assert_allclose(row["point_ras"], [-point[0], -point[1], point[2]], atol=1e-3)
        assert row["probability"] == pytest.approx(prediction.probability, abs=1e-6)
        assert row["uncertainty"] == pytest.approx(prediction.uncertainty, abs=1e-6)
        assert row["outside_fraction"] == 0.0
        # The classification's warnings, then the measurement's (measured by default).
        measured = measure_nodule(image, point, model_card={})
        assert row["warnings"] == prediction.warnings + [w for w in measured.warnings if w not in prediction.warnings]
        assert row["saliency"] is None


def test_no_tta_reports_no_uncertainty(capsys, chest, model_path):
    path, _, nodules = chest
    code, out, _ = run_cli(capsys, "classify", path, "--point", ras_text(nodules[1]["center_lps"]),
                           "--model", model_path, "--device", "cpu", "--json", "--no-tta")
    assert code == 0
    document = json.loads(out)
    assert document["tta"] is False and document["points"][0]["uncertainty"] is None


def test_lps_flag_and_ras_default_give_the_same_point(capsys, chest, model_path):
    path, _, nodules = chest
    x, y, z = nodules[3]["center_lps"]
    _, ras_out, _ = run_cli(capsys, "classify", path, "--point", f"{-x},{-y},{z}", "--model", model_path, "--json")
    _, lps_out, _ = run_cli(capsys, "classify", path, "--lps", "--point", f"{x},{y},{z}", "--model", model_path, "--json")
    ras_row, lps_row = json.loads(ras_out)["points"][0], json.loads(lps_out)["points"][0]
    np.testing.assert_allclose(ras_row["point_lps"], (x, y, z))
    assert ras_row["point_lps"] == lps_row["point_lps"]
    assert ras_row["probability"] == pytest.approx(lps_row["probability"], abs=1e-9)


def test_negative_first_coordinate_is_taken_as_a_point_not_an_option(capsys, chest, model_path):
    path, _, _ = chest
    code, out, _ = run_cli(capsys, "classify", path, "--point", "-12.5,3,-4", "--model", model_path, "--json")
    assert code == 0
    assert json.loads(out)["points"][0]["point_ras"] == [-12.5, 3.0, -4.0]


def test_csv_output_reads_back_as_the_same_points(capsys, chest, model_path, tmp_path):
    path, _, nodules = chest
    markups = write_markups_json(tmp_path / "nodules.mrk.json",
                                 [LabelledPoint(n["name"], n["center_lps"]) for n in nodules])
    code, out, err = run_cli(capsys, "classify", path, "--points", markups, "--model", model_path, "--csv")
    assert code == 0
    assert REMINDER in err
    # A saved CSV carries the reminder as its first, commented line.
    assert out.splitlines()[0] == f"# {REMINDER}"
    rows = list(csv.DictReader(line for line in io.StringIO(out) if not line.startswith("#")))
    assert [row["label"] for row in rows] == [n["name"] for n in nodules]
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in rows)
    assert all(float(row["uncertainty"]) >= 0.0 for row in rows)
    result_csv = tmp_path / "results.csv"
    result_csv.write_text(out)
    for read_back, nodule in zip(read_points(result_csv), nodules):
        assert read_back.label == nodule["name"]
        np.testing.assert_allclose(read_back.point_lps, nodule["center_lps"], atol=1e-3)


def test_saliency_maps_are_written_in_ct_space_and_readable(capsys, chest, model_path, tmp_path):
    path, image, nodules = chest
    out_dir = tmp_path / "maps"
    code, out, _ = run_cli(capsys, "classify", path, "--point", ras_text(nodules[1]["center_lps"]),
                           "--point", ras_text(nodules[3]["center_lps"]), "--model", model_path,
                           "--saliency", out_dir, "--json")
    assert code == 0
    rows = json.loads(out)["points"]
    files = sorted(out_dir.glob("*.nrrd"))
    assert [Path(row["saliency"]) for row in rows] == files and len(files) == 2
    for file, nodule in zip(files, (nodules[1], nodules[3])):
        saliency = sitk.ReadImage(str(file))
        assert saliency.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(saliency.GetSpacing(), image.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(saliency.GetDirection(), image.GetDirection(), atol=1e-9)
        values = sitk.GetArrayViewFromImage(saliency)
        assert values.min() >= 0.0 and values.max() <= 1.0 + 1e-6
        # The map covers the point's cube, on the CT's voxel lattice.
        index = saliency.TransformPhysicalPointToContinuousIndex(nodule["center_lps"])
        assert all(0 <= i <= n - 1 for i, n in zip(index, saliency.GetSize()))
        ct_index = np.array(image.TransformPhysicalPointToContinuousIndex(saliency.GetOrigin()))
        np.testing.assert_allclose(ct_index, np.round(ct_index), atol=1e-4)


def test_table_output_names_the_saliency_folder(capsys, chest, model_path, tmp_path):
    path, _, nodules = chest
    code, out, _ = run_cli(capsys, "classify", path, "--point", ras_text(nodules[0]["center_lps"]),
                           "--model", model_path, "--saliency", tmp_path / "s")
    assert code == 0 and str((tmp_path / "s").resolve()) in out


# ------------------------------------------------------------------------------------ DICOM folders


def test_dicom_folder_with_two_series_needs_series_and_then_classifies(capsys, tmp_path, model_path):
    from test_readers import THICK_UID, THIN_UID, gradient_ct, write_dicom_series

    write_dicom_series(tmp_path / "a", gradient_ct((40, 40, 30), (1.5, 1.5, 2.0), (-30.0, -30.0, -30.0)),
                       THIN_UID, "thin", "a")
    write_dicom_series(tmp_path / "b", gradient_ct((40, 40, 10), (1.5, 1.5, 6.0), (-30.0, -30.0, -30.0)),
                       THICK_UID, "thick", "b")
    code, out, err = run_cli(capsys, "classify", tmp_path, "--point", "0,0,0", "--model", model_path)
    assert code == 1 and out == "" and "Traceback" not in err
    assert "--series" in err and THIN_UID in err and THICK_UID in err and "30 slices" in err

    code, out, err = run_cli(capsys, "classify", tmp_path, "--series", THICK_UID, "--point", "0,0,0",
                             "--model", model_path, "--json")
    assert code == 0
    warnings = json.loads(out)["points"][0]["warnings"]
    assert any("6.0 mm thick" in w for w in warnings)  # the thick series was the one read


# ------------------------------------------------------------------------------------- user mistakes


def test_missing_ct_is_one_sentence_and_exit_1(capsys, tmp_path, model_path):
    code, _, err = run_cli(capsys, "classify", tmp_path / "none.nrrd", "--point", "1,2,3", "--model", model_path)
    assert_one_sentence_error(code, err, "does not exist")


def test_point_outside_the_ct_names_the_point_and_the_ct_extent(capsys, chest, model_path):
    path, _, _ = chest
    code, _, err = run_cli(capsys, "classify", path, "--point", "400,0,0", "--model", model_path)
    assert_one_sentence_error(code, err, "P1", "RAS 400.0, 0.0, 0.0", "spans R", "--lps")


@pytest.mark.parametrize("point", ["1,2", "a,b,c", "1;2;3;4"])
def test_malformed_point_is_one_sentence_and_exit_1(capsys, chest, model_path, point):
    path, _, _ = chest
    code, _, err = run_cli(capsys, "classify", path, "--point", point, "--model", model_path)
    assert_one_sentence_error(code, err, "three numbers")


def test_no_points_is_one_sentence_and_exit_1(capsys, chest, model_path):
    path, _, _ = chest
    code, _, err = run_cli(capsys, "classify", path, "--model", model_path)
    assert_one_sentence_error(code, err, "--point")


def test_missing_model_is_one_sentence_and_exit_1(capsys, chest, tmp_path):
    path, _, _ = chest
    code, _, err = run_cli(capsys, "classify", path, "--point", "1,2,3", "--model", tmp_path / "nope.json")
    assert_one_sentence_error(code, err, "does not exist")


@pytest.mark.parametrize("runtime, suffix", [("auto", ".onnx"), ("torch", ".safetensors")])
def test_tampered_model_is_refused_before_any_result(capsys, chest, model_path, tmp_path, runtime, suffix):
    path, _, _ = chest
    for other in (".json", ".onnx", ".saliency.onnx", ".safetensors"):
        (tmp_path / f"model{other}").write_bytes(model_path.with_name(f"model{other}").read_bytes())
    data = bytearray(model_path.with_suffix(suffix).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / f"model{suffix}").write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "classify", path, "--point", "1,2,3", "--model", tmp_path / "model.json",
                             "--runtime", runtime)
    assert_one_sentence_error(code, err, "sha256")
    assert f"model{suffix} does not match" in err
    assert out == ""


def test_unreadable_points_file_is_one_sentence_and_exit_1(capsys, chest, model_path, tmp_path):
    path, _, _ = chest
    bad = tmp_path / "points.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    code, _, err = run_cli(capsys, "classify", path, "--points", bad, "--model", model_path)
    assert_one_sentence_error(code, err, "x,y,z")


def test_usage_mistake_is_an_argparse_error_with_exit_2(capsys, chest):
    path, _, _ = chest
    with pytest.raises(SystemExit) as info:
        main(["classify", str(path), "--point", "1,2,3", "--batch-size", "0"])
    assert info.value.code == 2
    assert "batch-size" in capsys.readouterr().err


def test_installed_command_reports_a_user_mistake_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "notadiagnosis.cli", "classify", str(tmp_path / "missing.nrrd"),
                             "--point", "1,2,3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("notadiagnosis: error: ")


def test_installed_command_prints_the_whole_output_before_it_ends_the_process_at_once(capsys, chest, model_path):
    path, _, nodules = chest
    point = ras_text(nodules[0]["center_lps"])
    code, expected, _ = run_cli(capsys, "classify", path, "--point", point, "--model", model_path, "--json")
    result = subprocess.run([sys.executable, "-m", "notadiagnosis", "classify", str(path), "--point", point, "--model",
                             str(model_path), "--json"], capture_output=True, text=True, timeout=300)
    assert (result.returncode, code) == (0, 0), result.stderr
    assert json.loads(result.stdout) == json.loads(expected)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_output_that_cannot_be_written_at_the_end_is_an_error_not_a_silent_success(chest, model_path):
    path, _, nodules = chest
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}  # written at the end
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "notadiagnosis", "classify", str(path), "--point",
                                 ras_text(nodules[0]["center_lps"]), "--model", str(model_path), "--csv"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, env=environment)
    assert result.returncode == 120
    assert "notadiagnosis: error: the output could not be written" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------- info


def test_info_prints_versions_device_and_the_given_model_card(capsys, model_path):
    code, out, _ = run_cli(capsys, "info", "--model", model_path, "--device", "cpu")
    assert code == 0
    import torch

    assert f"torch {torch.__version__}" in out and f"SimpleITK {sitk.Version_VersionString()}" in out
    assert f"numpy {np.__version__}" in out and "python " in out
    assert "Runtime: onnxruntime" in out and "Device: cpu (2 threads), ONNX Runtime" in out and "CPUExecutionProvider" in out
    assert '"name": "random-test-model"' in out and "sha256" in out


def test_info_names_the_torch_runtime_when_asked(capsys, model_path):
    code, out, _ = run_cli(capsys, "info", "--model", model_path, "--device", "cpu", "--runtime", "torch", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["runtime"] == "torch" and document["device"].startswith("cpu (") and "torch" in document["device"]


def test_info_json_says_whether_a_default_model_is_bundled(capsys):
    code, out, _ = run_cli(capsys, "info", "--json", "--device", "cpu")
    assert code == 0
    document = json.loads(out)
    assert {"torch", "SimpleITK", "numpy", "python"} <= set(document["versions"])
    try:
        default_model_path()
    except NoDefaultModelError:
        assert document["model_card"] is None and "No default model is bundled" in document["note"]
    else:
        assert document["model_card"]["weights"]["sha256"]


# ----------------------------------------------------------------------------------------- demo


def check_demo_inputs(out_dir: Path) -> list:
    expected_ct, nodules = make_synthetic_chest_ct()
    ct = sitk.ReadImage(str(out_dir / "synthetic-chest-ct.nrrd"))
    assert ct.GetSize() == expected_ct.GetSize() and ct.GetSpacing() == expected_ct.GetSpacing()
    points = read_points(out_dir / "synthetic-nodules.mrk.json")
    assert [p.label for p in points] == [n["name"] for n in nodules]
    for point, nodule in zip(points, nodules):
        np.testing.assert_allclose(point.point_lps, nodule["center_lps"])
    return points


def test_demo_runs_end_to_end_with_the_default_model_or_says_plainly_none_is_bundled(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "demo", "--out", tmp_path, "--device", "cpu")
    assert code == 0
    check_demo_inputs(tmp_path)
    try:
        default_model_path()
    except NoDefaultModelError:
        assert "No default model is bundled" in out and "NOTHING WAS CLASSIFIED" in out
        assert "Probability" not in out and not (tmp_path / "saliency").exists()
        assert not (tmp_path / "results.json").exists()
    else:
        assert len(list((tmp_path / "saliency").glob("*.nrrd"))) == 4
        assert "Probability" in out
    assert out.rstrip().endswith(REMINDER)


def test_demo_with_a_model_classifies_each_nodule_and_writes_saliency_maps(capsys, tmp_path, model_path):
    code, out, _ = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--model", model_path)
    assert code == 0
    check_demo_inputs(tmp_path / "demo")
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [row["kind"] for row in results["points"]] == ["solid-small-smooth", "solid-large-spiculated",
                                                          "ground-glass", "calcified"]
    maps = sorted((tmp_path / "demo" / "saliency").glob("*.nrrd"))
    assert len(maps) == 4 and [Path(row["saliency"]) for row in results["points"]] == maps
    for row in results["points"]:
        assert row["label"] in out
    assert str((tmp_path / "demo" / "saliency").resolve()) in out


# ------------------------------------------------------------------- hardening from a new user's run (issue 14)


REPO_ROOT = Path(__file__).resolve().parents[2]


def small_ct(path: Path, array: np.ndarray, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), True)
    return path


def varied_ct(size_zyx=(20, 40, 40), low=-1000.0, high=100.0) -> np.ndarray:
    """Air around a block of tissue: a CT with data (values vary), as float32."""
    array = np.full(size_zyx, low, dtype=np.float32)
    z, y, x = (n // 4 for n in size_zyx)
    array[z:-z, y:-y, x:-x] = high
    return array


def test_both_readmes_say_where_the_installed_command_is():
    venv = re.search(r"^VENV\s*:=\s*(\S+)", (REPO_ROOT / "Makefile").read_text(), re.M).group(1)
    for readme in (REPO_ROOT / "README.md", REPO_ROOT / "NotADiagnosisLib" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        assert f"source {venv}/bin/activate" in text and f"{venv}/bin/notadiagnosis" in text, readme
        # The activation comes before the first bare `notadiagnosis` command of a code block.
        activation = text.index(f"source {venv}/bin/activate")
        first_command = re.search(r"^notadiagnosis ", text, re.M)
        assert first_command is None or activation < first_command.start(), readme
    # The path the READMEs name is where `make venv` puts the console script (this interpreter's venv in CI).
    assert (Path(sys.executable).parent / "notadiagnosis").exists() or Path(sys.prefix).name != venv


@pytest.mark.parametrize("runtime, suffix", [("auto", ".onnx"), ("torch", ".safetensors")])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_info_verifies_the_model_like_classify_and_refuses_a_damaged_one(capsys, model_path, tmp_path, damage,
                                                                         runtime, suffix):
    for other in (".json", ".onnx", ".saliency.onnx", ".safetensors"):
        (tmp_path / f"model{other}").write_bytes(model_path.with_name(f"model{other}").read_bytes())
    data = bytearray(model_path.with_suffix(suffix).read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    (tmp_path / f"model{suffix}").write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "info", "--model", tmp_path / "model.json", "--device", "cpu", "--runtime", runtime)
    assert_one_sentence_error(code, err, "sha256")
    assert '"name"' not in out  # no card shown as if the model were fine


def test_model_sha256_option_pins_a_user_model(capsys, chest, model_path):
    from notadiagnosis.weights import sha256_of

    path, _, nodules = chest
    point = ras_text(nodules[0]["center_lps"])
    # The pin names the file the runtime loads: the .onnx file on ONNX Runtime (the default), the tensors on torch.
    for runtime, suffix in (("auto", ".onnx"), ("torch", ".safetensors")):
        right = sha256_of(model_path.with_suffix(suffix))
        code, out, _ = run_cli(capsys, "classify", path, "--point", point, "--model", model_path, "--model-sha256", right,
                               "--json", "--runtime", runtime)
        assert code == 0 and json.loads(out)["model"]["sha256"] == right
        assert json.loads(out)["model"]["file"] == f"model{suffix}"
    wrong_file = sha256_of(model_path.with_suffix(".safetensors"))
    code, out, err = run_cli(capsys, "classify", path, "--point", point, "--model", model_path, "--model-sha256", wrong_file)
    assert_one_sentence_error(code, err, "not the expected")
    code, out, err = run_cli(capsys, "classify", path, "--point", point, "--model", model_path, "--model-sha256", "0" * 64)
    assert_one_sentence_error(code, err, "not the expected")
    assert out == ""
    code, _, err = run_cli(capsys, "info", "--model", model_path, "--model-sha256", "0" * 64)
    assert_one_sentence_error(code, err, "not the expected")


@pytest.mark.parametrize("fill, fragment", [(np.nan, "no finite voxel"), (-1000.0, "one value")],
                         ids=["all-nan", "constant"])
def test_ct_without_usable_data_gets_no_probability(capsys, model_path, tmp_path, fill, fragment):
    ct = small_ct(tmp_path / "empty.nrrd", np.full((20, 40, 40), fill, dtype=np.float32))
    code, out, err = run_cli(capsys, "classify", ct, "--lps", "--point", "20,20,20", "--model", model_path, "--json")
    assert_one_sentence_error(code, err, fragment)
    assert out == ""


def test_raw_unrescaled_intensities_keep_their_warning_and_a_result(capsys, model_path, tmp_path):
    ct = small_ct(tmp_path / "raw.nrrd", varied_ct(low=0.0, high=1100.0))
    code, out, _ = run_cli(capsys, "classify", ct, "--lps", "--point", "20,20,20", "--model", model_path, "--json")
    assert code == 0
    assert any("Hounsfield" in w for w in json.loads(out)["points"][0]["warnings"])


def test_model_path_that_does_not_exist_is_refused_not_substituted(capsys, chest, model_path, tmp_path):
    import shutil

    path, _, nodules = chest
    for suffix in (".json", ".safetensors"):
        shutil.copy(model_path.with_suffix(suffix), tmp_path / f"ok{suffix}")
    args = ["classify", path, "--point", ras_text(nodules[0]["center_lps"])]
    code, out, err = run_cli(capsys, *args, "--model", tmp_path / "ok.pt")
    assert_one_sentence_error(code, err, "ok.pt does not exist")
    (tmp_path / "ok.pt").write_bytes(b"a torch pickle, say")
    code, out, err = run_cli(capsys, *args, "--model", tmp_path / "ok.pt")
    assert_one_sentence_error(code, err, "neither a model card")
    assert out == ""


def test_csv_output_reads_back_even_for_a_point_on_the_ct_edge(capsys, model_path, tmp_path):
    origin = (0.1234567, -3.7654321, 1.0)
    ct = small_ct(tmp_path / "ct.nrrd", varied_ct(), origin=origin, spacing=(0.7, 0.7, 2.0))
    # Half a voxel beyond the first voxel centre along x: the CT's outer face, which is inside.
    edge_lps = (origin[0] - 0.35 + 1e-7, origin[1] + 10.0, origin[2] + 10.0)
    code, out, _ = run_cli(capsys, "classify", ct, "--lps", "--point", ",".join(repr(v) for v in edge_lps),
                           "--model", model_path, "--csv")
    assert code == 0
    saved = tmp_path / "results.csv"
    saved.write_text(out)
    np.testing.assert_array_equal(read_points(saved)[0].point_lps, edge_lps)
    code, out, err = run_cli(capsys, "classify", ct, "--points", saved, "--model", model_path, "--csv")
    assert code == 0, err


def ct_with_nan(tmp_path: Path) -> Path:
    return small_ct(tmp_path / "nan.nrrd", np.full((20, 40, 40), np.nan, dtype=np.float32))


@pytest.mark.parametrize("mistake", ["missing CT", "bad points file", "missing model", "uneven DICOM series"])
def test_input_mistakes_are_reported_before_the_model_is_loaded(capsys, monkeypatch, chest, tmp_path, mistake):
    from test_readers import THIN_UID, gradient_ct, write_dicom_series

    from notadiagnosis import cli

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(cli, "load_classifier", must_not_load)
    monkeypatch.setattr("notadiagnosis.classifier.Classifier.load", must_not_load)
    path, _, _ = chest
    bad_points = tmp_path / "points.csv"
    bad_points.write_text("a,b,c\n1,2,3\n")
    if mistake == "uneven DICOM series":  # refused on its headers, before any pixel is read
        write_dicom_series(tmp_path / "dicom", gradient_ct((16, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), THIN_UID,
                           "gap", "s")
        (tmp_path / "dicom" / "s004.dcm").unlink()
    args = {
        "missing CT": [tmp_path / "none.nrrd", "--point", "1,2,3"],
        "bad points file": [path, "--points", bad_points],
        "missing model": [path, "--point", "1,2,3", "--model", tmp_path / "none.json"],
        "uneven DICOM series": [tmp_path / "dicom", "--lps", "--point", "8,8,4"],
    }[mistake]
    code, _, err = run_cli(capsys, "classify", *args)
    assert_one_sentence_error(code, err)


@pytest.mark.parametrize("mistake, fragment", [("point outside", "lies outside the CT"),
                                               ("CT without data", "no finite voxel")])
def test_mistakes_found_in_the_ct_pixels_win_over_the_model_loading_meanwhile_and_leave_no_thread(
        capsys, monkeypatch, chest, tmp_path, mistake, fragment):
    from notadiagnosis import cli

    loads = []

    def broken_load(*args, **kwargs):
        loads.append(threading.current_thread().name)
        time.sleep(0.2)  # still loading when the CT is refused
        raise WeightsError("the model is broken")

    monkeypatch.setattr(cli, "load_classifier", broken_load)
    path, _, _ = chest
    args = {"point outside": [path, "--point", "900,0,0"],
            "CT without data": [ct_with_nan(tmp_path), "--lps", "--point", "20,20,20"]}[mistake]
    code, _, err = run_cli(capsys, "classify", *args)
    assert_one_sentence_error(code, err, fragment)
    assert len(loads) == 1 and loads[0].startswith("notadiagnosis-load")  # it loaded beside the read, and waited for
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("notadiagnosis-load")]


def test_model_loads_on_a_thread_of_its_own_from_when_the_ct_pixels_are_read():
    from notadiagnosis.cli import read_while_loading

    loaded = threading.Event()

    def read(start_load):
        assert not loaded.is_set()  # nothing loads while the headers are read
        start_load()
        assert loaded.wait(60)  # the model loads while this thread reads the pixels
        return "image"

    def load():
        assert threading.current_thread() is not threading.main_thread()
        loaded.set()
        return "classifier"

    assert read_while_loading(read, load) == ("image", "classifier")


def test_a_ct_refused_on_its_headers_costs_no_load_and_a_ct_read_without_the_signal_still_gets_its_model():
    from notadiagnosis.cli import read_while_loading

    loads = []

    def refused(start_load):
        raise InputError("uneven slices")

    with pytest.raises(InputError, match="uneven slices"):
        read_while_loading(refused, lambda: loads.append("loaded"))
    assert loads == []
    assert read_while_loading(lambda start_load: "image", lambda: "classifier") == ("image", "classifier")


def test_a_model_error_is_raised_once_the_ct_is_read(monkeypatch):
    from notadiagnosis.cli import read_while_loading

    def broken_load():
        raise WeightsError("the model's sha256 does not match its card")

    def read(start_load):
        start_load()
        return "image"

    with pytest.raises(WeightsError, match="sha256"):
        read_while_loading(read, broken_load)


def test_missing_ct_is_reported_without_importing_the_inference_runtime(tmp_path):
    script = ("import sys; from notadiagnosis.cli import main; "
              f"code = main(['classify', {str(tmp_path / 'none.nrrd')!r}, '--point', '1,2,3']); "
              "print(code, sorted(m for m in ('torch', 'onnxruntime', 'notadiagnosis.classifier') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split(None, 1) == ["1", "[]\n"], result.stdout + result.stderr
    assert "does not exist" in result.stderr


def test_series_with_a_missing_slice_is_one_clean_sentence_without_itk_text(capfd, model_path, tmp_path):
    from test_readers import THIN_UID, gradient_ct, write_dicom_series

    write_dicom_series(tmp_path, gradient_ct((16, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), THIN_UID, "gap", "s")
    (tmp_path / "s004.dcm").unlink()
    code = main(["classify", str(tmp_path), "--lps", "--point", "8,8,4", "--model", str(model_path)])
    captured = capfd.readouterr()
    assert "WARNING" not in captured.err and "itk" not in captured.err.lower()
    assert_one_sentence_error(code, captured.err, "uneven slice positions")
