"""Cohort mode (`notadiagnosis classify --manifest`) on generated CTs with a small random model.

What a researcher with hundreds of CTs relies on: an interrupted run resumes to exactly the results
of an uninterrupted one, a broken row is recorded with its reason while the rest finish, shards
partition the manifest, and each CT's results are the single-CT command's results.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import add_sphere, make_ct, save_random_model
from notadiagnosis.cli import EXIT_CTS_FAILED, main
from notadiagnosis.cohort import COHORT_CSV_COLUMNS, CohortRow, read_manifest, shard_rows
from notadiagnosis.errors import InputError

N_CTS = 5


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("model"), seed=4)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Five small CTs (one written as a points-file case, one in LPS) and their manifest; returns the manifest."""
    folder = tmp_path_factory.mktemp("cohort")
    (folder / "scans").mkdir()
    rows = ["id,ct,points,coordinates,notes"]
    for index in range(N_CTS):
        ct = make_ct(size=(48, 44, 20), spacing=(1.5, 1.5, 3.0), origin=(-36.0, -33.0, -30.0), background_hu=-1000.0)
        ct = add_sphere(add_sphere(ct, (0.0, 0.0, 0.0), 25.0, -850.0), (3.0 * index, -2.0, 1.0), 3.0 + index, 40.0)
        sitk.WriteImage(ct, str(folder / "scans" / f"ct{index}.nrrd"), True)
        if index == 1:
            (folder / "p1.csv").write_text("label,x,y,z\nnodule,-3.0,2.0,1.0\nwall,0,0,-20\n")
            rows.append(f"case{index},scans/ct{index}.nrrd,p1.csv,,from a file")
        elif index == 2:
            rows.append(f'case{index},scans/ct{index}.nrrd,"6.0,-2.0,1.0; 1,1,1",LPS,')
        else:
            rows.append(f'case{index},scans/ct{index}.nrrd,"{-3.0 * index},2.0,1.0; 0,0,0; 5,5,5",,')
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def data_rows(path: Path) -> list:
    text = path.read_text()
    return list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))


@pytest.fixture(scope="module")
def uninterrupted(cohort, model_path, tmp_path_factory):
    """The reference: each format written by one uninterrupted run (in-process reading)."""
    folder = tmp_path_factory.mktemp("reference")
    outputs = {}
    for suffix in (".csv", ".jsonl"):
        out = folder / f"results{suffix}"
        assert main(["classify", "--manifest", str(cohort), "--out", str(out), "--model", str(model_path),
                     "--workers", "0"]) == 0
        outputs[suffix] = out
    return outputs


def test_every_ct_of_the_manifest_is_classified_with_the_single_ct_results(capsys, cohort, model_path, uninterrupted):
    rows = data_rows(uninterrupted[".csv"])
    assert [row["case"] for row in rows] == ["case0"] * 3 + ["case1"] * 2 + ["case2"] * 2 + ["case3"] * 3 + ["case4"] * 3
    assert {row["status"] for row in rows} == {"ok"}
    assert list(rows[0]) == list(COHORT_CSV_COLUMNS)
    # The same numbers as `classify` on that CT alone: one output path for both.
    code, out, _ = run(capsys, "classify", cohort.parent / "scans" / "ct2.nrrd", "--lps", "--point", "6.0,-2.0,1.0",
                       "--point", "1,1,1", "--model", model_path, "--csv")
    assert code == 0
    single = list(csv.DictReader(line for line in io.StringIO(out) if not line.startswith("#")))
    cohort_rows = [row for row in rows if row["case"] == "case2"]
    for alone, in_cohort in zip(single, cohort_rows):
        assert {key: in_cohort[key] for key in alone} == alone
    # JSONL: one line per CT after the options line, the same points as the CSV.
    lines = uninterrupted[".jsonl"].read_text().splitlines()
    records = [json.loads(line) for line in lines[1:]]
    assert [r["case"] for r in records] == [f"case{i}" for i in range(N_CTS)]
    assert [p["probability"] for r in records for p in r["points"]] == [float(row["probability"]) for row in rows]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_after_an_interruption_gives_the_results_of_an_uninterrupted_run(
        capsys, monkeypatch, cohort, model_path, uninterrupted, tmp_path, suffix):
    from notadiagnosis.classifier import Classifier

    out = tmp_path / f"results{suffix}"
    original = Classifier.predict
    calls = []

    def interrupted_on_the_third_ct(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "predict", interrupted_on_the_third_ct)
    code, _, err = run(capsys, "classify", "--manifest", cohort, "--out", out, "--model", model_path, "--workers", "0")
    assert code == 130 and "rerun the same command to resume" in err
    monkeypatch.setattr(Classifier, "predict", original)
    # A kill in the middle of writing leaves a cut-off CT: its partial rows must not count as done.
    reference = uninterrupted[suffix].read_text()
    done_so_far = out.read_text()
    assert reference.startswith(done_so_far) and len(done_so_far) < len(reference)
    following = reference[len(done_so_far):]
    # CSV: the third CT's first row and part of its second; JSONL: half of its line.
    cut = following.index("\n") + 11 if suffix == ".csv" else following.index("\n") // 2
    out.write_text(done_so_far + following[:cut])
    code, stdout, _ = run(capsys, "classify", "--manifest", cohort, "--out", out, "--model", model_path, "--workers", "0")
    assert code == 0 and "2 already done" in stdout
    assert out.read_text() == reference


def test_broken_rows_are_recorded_with_their_reason_and_the_rest_finish(capsys, cohort, model_path, tmp_path):
    manifest = tmp_path / "manifest.csv"
    scans = cohort.parent / "scans"
    manifest.write_text(
        "id,ct,points\n"
        f"good,{scans / 'ct0.nrrd'},\"0,0,0\"\n"
        f"missing,{scans / 'nope.nrrd'},\"0,0,0\"\n"
        f"outside,{scans / 'ct1.nrrd'},\"500,0,0\"\n"
        f"no-points,{scans / 'ct2.nrrd'},\n"
        f"bad-points,{scans / 'ct3.nrrd'},{tmp_path / 'nope.mrk.json'}\n"
        "not-a-ct," + str(manifest) + ",\"0,0,0\"\n"
        f"good-too,{scans / 'ct4.nrrd'},\"1,1,1\"\n"
    )
    out = tmp_path / "results.csv"
    code, stdout, _ = run(capsys, "classify", "--manifest", manifest, "--out", out, "--model", model_path, "--workers", "0")
    # Every row written, the failures recorded with their reasons, and an exit status a job array notices.
    assert code == EXIT_CTS_FAILED and "2 classified and 5 failed" in stdout
    rows = {row["case"]: row for row in data_rows(out)}
    assert [case for case, row in rows.items() if row["status"] == "ok"] == ["good", "good-too"]
    reasons = {case: row["error"] for case, row in rows.items() if row["status"] == "failed"}
    assert "does not exist" in reasons["missing"] and "lies outside the CT" in reasons["outside"]
    assert "has no points" in reasons["no-points"] and "does not exist" in reasons["bad-points"]
    assert "could not read" in reasons["not-a-ct"]
    for reason in reasons.values():  # one sentence each, nothing else in the row
        assert reason.count(". ") == 0 and "Traceback" not in reason
    assert all(rows[case]["probability"] == "" for case in reasons)


def test_shards_partition_the_manifest(capsys, cohort, model_path, uninterrupted, tmp_path):
    rows = read_manifest(cohort)
    for n in (1, 2, 3, N_CTS, N_CTS + 2):
        shards = [shard_rows(rows, (k, n)) for k in range(1, n + 1)]
        cases = [row.case for shard in shards for row in shard]
        assert sorted(cases) == sorted(row.case for row in rows) and len(set(cases)) == len(rows)
    # Run as two jobs of an array: together they hold exactly the uninterrupted run's rows.
    reference = {(row["case"], row["label"]): row for row in data_rows(uninterrupted[".csv"])}
    together = {}
    for k in (1, 2):
        out = tmp_path / f"shard{k}.csv"
        code, stdout, _ = run(capsys, "classify", "--manifest", cohort, "--out", out, "--shard", f"{k}/2",
                              "--model", model_path, "--workers", "0")
        assert code == 0 and f"shard {k}/2 of {N_CTS}" in stdout
        for row in data_rows(out):
            assert (row["case"], row["label"]) not in together
            together[(row["case"], row["label"])] = row
    assert together == reference


def test_worker_processes_give_the_same_results_as_reading_in_process(cohort, model_path, uninterrupted, tmp_path):
    out = tmp_path / "results.csv"
    assert main(["classify", "--manifest", str(cohort), "--out", str(out), "--model", str(model_path),
                 "--workers", "2"]) == 0
    assert out.read_text() == uninterrupted[".csv"].read_text()


def test_resume_with_other_options_is_refused(capsys, cohort, model_path, uninterrupted, tmp_path):
    out = tmp_path / "results.csv"
    out.write_text(uninterrupted[".csv"].read_text())
    code, _, err = run(capsys, "classify", "--manifest", cohort, "--out", out, "--model", model_path, "--no-tta")
    assert code == 1 and "other options" in err and "tta" in err
    assert out.read_text() == uninterrupted[".csv"].read_text()  # left as it was


def test_an_existing_file_of_another_kind_is_never_overwritten(capsys, cohort, model_path, tmp_path):
    out = tmp_path / "notes.csv"
    out.write_text("my,own,data\n1,2,3\n")
    code, _, err = run(capsys, "classify", "--manifest", cohort, "--out", out, "--model", model_path)
    assert code == 1 and "not a results file" in err
    assert out.read_text() == "my,own,data\n1,2,3\n"


@pytest.mark.parametrize("text, fragment", [
    ("ct,label\na.nrrd,x\n", "no points column"),
    ("ct,points\n", "no rows"),
    ("ct,points\na.nrrd,\"1,2,3\"\na.nrrd,\"4,5,6\"\n", "both name the case"),
])
def test_unusable_manifest_is_refused_in_one_sentence(tmp_path, text, fragment):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(text)
    with pytest.raises(InputError, match=fragment):
        read_manifest(manifest)


@pytest.mark.parametrize("args, fragment", [
    (["--manifest", "m.csv"], "--out"),
    (["--manifest", "m.csv", "--out", "r.csv", "--point", "1,2,3"], "--point does not apply"),
    (["ct.nrrd", "--manifest", "m.csv", "--out", "r.csv"], "not both"),
    (["ct.nrrd", "--point", "1,2,3", "--shard", "1/2"], "--shard belongs to the cohort"),
    (["--manifest", "m.csv", "--out", "r.csv", "--shard", "3/2"], "K/N"),
])
def test_cohort_usage_mistakes_are_argparse_errors(capsys, args, fragment):
    with pytest.raises(SystemExit) as info:
        main(["classify", *args])
    assert info.value.code == 2 and fragment in capsys.readouterr().err


def test_manifest_paths_are_relative_to_the_manifest(cohort):
    row = read_manifest(cohort)[0]
    assert isinstance(row, CohortRow) and row.ct_path == cohort.parent / "scans" / "ct0.nrrd"
    assert row.ct_cell == "scans/ct0.nrrd"


def test_a_reason_on_several_lines_is_recorded_on_one_and_the_file_still_resumes(capsys, cohort, model_path, tmp_path):
    from test_readers import THICK_UID, THIN_UID, gradient_ct, write_dicom_series

    dicom = tmp_path / "two-series"
    write_dicom_series(dicom / "a", gradient_ct((20, 20, 6), (1.5, 1.5, 2.0), (-15.0, -15.0, -6.0)), THIN_UID, "thin", "a")
    write_dicom_series(dicom / "b", gradient_ct((20, 20, 3), (1.5, 1.5, 4.0), (-15.0, -15.0, -6.0)), THICK_UID, "thick", "b")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"id,ct,points\ntwo,{dicom},\"0,0,0\"\ngood,{cohort.parent / 'scans' / 'ct0.nrrd'},\"0,0,0\"\n")
    out = tmp_path / "results.csv"
    args = ["classify", "--manifest", manifest, "--out", out, "--model", model_path, "--workers", "0"]
    assert run(capsys, *args)[0] == EXIT_CTS_FAILED
    written = out.read_text()
    rows = data_rows(out)
    assert [row["status"] for row in rows] == ["failed", "ok"]
    assert "\n" not in rows[0]["error"] and THIN_UID in rows[0]["error"] and THICK_UID in rows[0]["error"]
    code, stdout, _ = run(capsys, *args)
    # The file still holds a failed CT: the resumed run says so too.
    assert code == EXIT_CTS_FAILED and "2 already done" in stdout and out.read_text() == written


def test_a_damaged_line_before_others_is_refused_not_dropped(capsys, cohort, model_path, uninterrupted, tmp_path):
    out = tmp_path / "results.csv"
    lines = uninterrupted[".csv"].read_text().splitlines(keepends=True)
    lines[4] = "edited by hand\n"
    out.write_text("".join(lines))
    code, _, err = run(capsys, "classify", "--manifest", cohort, "--out", out, "--model", model_path)
    assert code == 1 and "Line 5" in err and "damaged" in err
    assert out.read_text() == "".join(lines)


def test_two_runs_never_write_one_results_file(capsys, cohort, model_path, tmp_path):
    import fcntl

    out = tmp_path / "results.csv"
    with open(tmp_path / ".results.csv.lock", "a") as lock:  # as a run in progress holds it
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run(capsys, "classify", "--manifest", cohort, "--out", out, "--model", model_path)
    assert code == 1 and "Another run is writing" in err and not out.exists()


def test_saliency_maps_of_a_cohort_go_to_one_folder_per_case(capsys, cohort, model_path, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"id,ct,points\nfirst case,{cohort.parent / 'scans' / 'ct0.nrrd'},\"0,0,0; 1,1,1\"\n")
    out = tmp_path / "results.jsonl"
    code, _, _ = run(capsys, "classify", "--manifest", manifest, "--out", out, "--model", model_path,
                     "--saliency", tmp_path / "maps", "--workers", "0")
    assert code == 0
    record = json.loads(out.read_text().splitlines()[1])
    maps = sorted((tmp_path / "maps" / "first_case").glob("*.nrrd"))
    assert len(maps) == 2 and [Path(p["saliency"]) for p in record["points"]] == maps
