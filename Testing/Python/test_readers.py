"""Readers: CT files and DICOM folders (one or several series), points from Slicer files, CSV and text."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import LIDC_0001_SERIES_UID
from helpers import make_ct, rotation_matrix
from notadiagnosis.errors import InputError
from notadiagnosis.readers import (
    LabelledPoint,
    list_dicom_series,
    parse_point,
    read_ct,
    read_fcsv,
    read_markups_json,
    read_points,
    read_points_csv,
    write_markups_json,
)

# ------------------------------------------------------------------------------------- CT files


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_file_is_read_with_its_geometry_and_values(tmp_path, suffix):
    direction = rotation_matrix([0.3, -0.2, 1.0], 25.0)
    ct = make_ct(size=(20, 18, 7), spacing=(0.7, 0.9, 2.5), direction=direction, origin=(-12.0, 30.0, -80.5))
    array = np.arange(7 * 18 * 20, dtype=np.int16).reshape(7, 18, 20) - 1000
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))

    read = read_ct(path)

    assert read.GetSize() == (20, 18, 7)
    np.testing.assert_allclose(read.GetSpacing(), (0.7, 0.9, 2.5), atol=1e-5)
    np.testing.assert_allclose(read.GetOrigin(), (-12.0, 30.0, -80.5), atol=1e-4)
    np.testing.assert_allclose(np.reshape(read.GetDirection(), (3, 3)), direction, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), array)


def test_missing_ct_path_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(InputError, match="does not exist") as info:
        read_ct(tmp_path / "nowhere.nrrd")
    assert "\n" not in str(info.value)


def test_file_that_is_not_an_image_is_refused(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError, match="could not read"):
        read_ct(path)


def test_two_dimensional_image_is_refused(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(path))
    with pytest.raises(InputError, match="2D image"):
        read_ct(path)


def test_colour_image_is_refused(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(InputError, match="3 values per voxel"):
        read_ct(path)


def test_series_uid_with_a_single_file_is_refused(tmp_path):
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(make_ct(size=(8, 8, 4)), str(path))
    with pytest.raises(InputError, match="DICOM folder"):
        read_ct(path, series_uid="1.2.3")


# ------------------------------------------------------------------------------------ DICOM folders

STUDY_UID = "1.2.826.0.1.3680043.8.498.1000"
THIN_UID = "1.2.826.0.1.3680043.8.498.1001"
THICK_UID = "1.2.826.0.1.3680043.8.498.1002"


def write_dicom_series(folder: Path, image: sitk.Image, series_uid: str, description: str, prefix: str,
                       shifts_mm: dict | None = None) -> None:
    """Write ``image`` (int16 HU) as one DICOM file per slice with the tags a CT series needs; ``shifts_mm``
    moves slices (index: mm along z) away from where the image puts them."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        position = np.add(image.TransformIndexToPhysicalPoint((0, 0, k)), (0.0, 0.0, (shifts_mm or {}).get(k, 0.0)))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": STUDY_UID,
            "0020|000e": series_uid,
            "0008|103e": description,
            "0020|0011": "1" if series_uid == THIN_UID else "2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": orientation,
            "0028|1052": "0",
            "0028|1053": "1",
            "0010|0020": "SYNTHETIC-0001",
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k + 1:03d}.dcm"))
        writer.Execute(slice_image)


def gradient_ct(size, spacing, origin) -> sitk.Image:
    """An int16 CT whose voxel values encode their slice index (so slice order can be checked)."""
    ct = make_ct(size=size, spacing=spacing, origin=origin)
    array = np.zeros(tuple(reversed(size)), dtype=np.int16)
    array += (np.arange(size[2], dtype=np.int16) * 10 - 1000)[:, None, None]
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    return image


@pytest.fixture(scope="module")
def two_series_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom")
    thin = gradient_ct((24, 20, 12), (0.7, 0.7, 1.25), (-10.0, -8.0, -100.0))
    thick = gradient_ct((24, 20, 5), (0.7, 0.7, 3.0), (-10.0, -8.0, -100.0))
    # TCIA downloads nest series in subfolders: one series beside, one below.
    write_dicom_series(folder, thin, THIN_UID, "Chest 1.25mm", "thin")
    write_dicom_series(folder / "study" / "series2", thick, THICK_UID, "Chest 3mm", "thick")
    return folder


def test_series_in_a_folder_and_its_subfolders_are_listed(two_series_folder):
    series = {s.uid: s for s in list_dicom_series(two_series_folder)}
    assert set(series) == {THIN_UID, THICK_UID}
    assert series[THIN_UID].number_of_slices == 12
    assert series[THICK_UID].number_of_slices == 5
    assert series[THIN_UID].description == "Chest 1.25mm"
    assert series[THICK_UID].modality == "CT"


def test_folder_with_several_series_asks_which_listing_uid_description_and_slices(two_series_folder):
    with pytest.raises(InputError) as info:
        read_ct(two_series_folder)
    message = str(info.value)
    assert "--series" in message and "2 DICOM series" in message
    for uid, description, slices in ((THIN_UID, "Chest 1.25mm", "12 slices"), (THICK_UID, "Chest 3mm", "5 slices")):
        line = next(line for line in message.splitlines() if uid in line)
        assert description in line and slices in line


def test_series_uid_selects_that_series_with_its_geometry(two_series_folder):
    thick = read_ct(two_series_folder, series_uid=THICK_UID)
    assert thick.GetSize() == (24, 20, 5)
    np.testing.assert_allclose(thick.GetSpacing(), (0.7, 0.7, 3.0), atol=1e-4)
    np.testing.assert_allclose(thick.GetOrigin(), (-10.0, -8.0, -100.0), atol=1e-3)
    # Slices come back in patient order, with their HU values.
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(thick)[:, 0, 0], np.arange(5) * 10 - 1000)

    thin = read_ct(two_series_folder, series_uid=THIN_UID)
    assert thin.GetSize() == (24, 20, 12)
    np.testing.assert_allclose(thin.GetSpacing()[2], 1.25, atol=1e-4)


def test_one_slice_file_reads_the_whole_series_it_belongs_to(two_series_folder):
    one_slice = next((two_series_folder / "study" / "series2").glob("*.dcm"))
    image = read_ct(one_slice)
    assert image.GetSize() == (24, 20, 5)
    with pytest.raises(InputError, match="belongs to series"):
        read_ct(one_slice, series_uid=THIN_UID)


def test_unknown_series_uid_is_refused_with_the_list(two_series_folder):
    with pytest.raises(InputError, match="No series with UID 9.9.9") as info:
        read_ct(two_series_folder, series_uid="9.9.9")
    assert THIN_UID in str(info.value) and THICK_UID in str(info.value)


def test_series_with_a_missing_slice_is_refused(tmp_path):
    write_dicom_series(tmp_path, gradient_ct((16, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), THIN_UID, "gap", "s")
    assert read_ct(tmp_path).GetSize() == (16, 16, 8)  # complete: fine
    (tmp_path / "s004.dcm").unlink()
    with pytest.raises(InputError, match="uneven slice positions"):
        read_ct(tmp_path)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no slices here")
    with pytest.raises(InputError, match="No DICOM series"):
        read_ct(tmp_path)


@pytest.mark.shared
def test_real_lidc_folder_reads_as_one_ct_series_with_its_geometry(lidc_0001_dir):
    series = list_dicom_series(lidc_0001_dir)
    assert [s.uid for s in series] == [LIDC_0001_SERIES_UID]
    image = read_ct(lidc_0001_dir)
    assert image.GetSize() == (512, 512, 133)
    np.testing.assert_allclose(image.GetSpacing(), (0.703125, 0.703125, 2.5), atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=1e-6)
    # Rescale slope/intercept applied: air reads near -1000 HU, not raw stored values.
    middle = sitk.GetArrayViewFromImage(image)[66]
    assert np.percentile(middle, 5) < -900
    assert read_ct(lidc_0001_dir, series_uid=LIDC_0001_SERIES_UID).GetSize() == (512, 512, 133)


# ------------------------------------------------------------------------------ Slicer point files


def markups_document(points, coordinate_system=None, **markup_fields):
    markup = {"type": "Fiducial", "name": "F", "controlPoints": points, **markup_fields}
    if coordinate_system is not None:
        markup["coordinateSystem"] = coordinate_system
    return {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
            "Schema/markups-schema-v1.0.3.json#", "markups": [markup]}


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_markups_json_in_ras_is_converted_to_lps(tmp_path):
    path = write_json(tmp_path / "p.mrk.json", markups_document([{"label": "n1", "position": [10.0, -20.0, 30.0]}], "RAS"))
    assert read_points(path) == [LabelledPoint("n1", (-10.0, 20.0, 30.0))]


def test_markups_json_in_lps_is_kept(tmp_path):
    path = write_json(tmp_path / "p.mrk.json", markups_document([{"label": "n1", "position": [10.0, -20.0, 30.0]}], "LPS"))
    assert read_points(path) == [LabelledPoint("n1", (10.0, -20.0, 30.0))]


def test_markups_json_without_coordinate_system_uses_the_schema_default_lps(tmp_path):
    path = write_json(tmp_path / "p.mrk.json", markups_document([{"position": [1.0, 2.0, 3.0]}]))
    assert read_points(path) == [LabelledPoint("F-1", (1.0, 2.0, 3.0))]


def test_markups_json_skips_undefined_points_and_converts_micrometres(tmp_path):
    points = [
        {"label": "a", "position": [1000.0, 2000.0, -3000.0], "positionStatus": "defined"},
        {"label": "unset", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"},
    ]
    path = write_json(tmp_path / "p.mrk.json", markups_document(points, "LPS", coordinateUnits="um"))
    assert read_points(path) == [LabelledPoint("a", (1.0, 2.0, -3.0))]


def test_markups_json_with_only_a_line_is_refused(tmp_path):
    document = markups_document([{"position": [0, 0, 0]}, {"position": [1, 1, 1]}])
    document["markups"][0]["type"] = "Line"
    with pytest.raises(InputError, match="Line"):
        read_markups_json(write_json(tmp_path / "line.mrk.json", document))


@pytest.mark.parametrize("content, match", [
    ("{not json", "not readable JSON"),
    ('{"something": 1}', "not a Slicer markups file"),
    (json.dumps(markups_document([{"label": "x", "position": [1, 2]}])), "three numbers"),
    (json.dumps(markups_document([{"position": [1, 2, 3]}], "XYZ")), "neither LPS nor RAS"),
])
def test_damaged_markups_json_is_refused_in_one_sentence(tmp_path, content, match):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        read_points(path)


FCSV_ROWS = "vtkMRMLMarkupsFiducialNode_0,10,-20,30,0,0,0,1,1,1,0,nodule A,,vtkMRMLScalarVolumeNode1\n"


@pytest.mark.parametrize("header, expected", [
    ("# CoordinateSystem = LPS\n", (10.0, -20.0, 30.0)),
    ("# CoordinateSystem = RAS\n", (-10.0, 20.0, 30.0)),
    ("# CoordinateSystem = 1\n", (10.0, -20.0, 30.0)),  # Slicer 4.6-4.10: 1 = LPS
    ("# CoordinateSystem = 0\n", (-10.0, 20.0, 30.0)),  # 0 = RAS
    ("", (-10.0, 20.0, 30.0)),  # files older than the header are RAS
])
def test_fcsv_honours_its_coordinate_system_header(tmp_path, header, expected):
    path = tmp_path / "points.fcsv"
    path.write_text("# Markups fiducial file version = 4.10\n" + header
                    + "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n" + FCSV_ROWS)
    assert read_fcsv(path) == [LabelledPoint("nodule A", expected)]


def test_fcsv_with_non_numeric_coordinates_names_the_line(tmp_path):
    path = tmp_path / "points.fcsv"
    path.write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
                    "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n1,abc,2,3,0,0,0,1,1,1,0,a,,\n")
    with pytest.raises(InputError, match="line 4"):
        read_points(path)


def test_slicer_written_point_lists_read_back_as_the_same_lps_points(tmp_path):
    """Files written by Slicer's own storage nodes (slicer-core), in RAS and LPS, JSON and fcsv."""
    slicer = pytest.importorskip("slicer")
    ras = [(10.0, -20.0, 30.5), (-1.5, 2.5, -3.5)]
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    for label, position in zip(("a", "b"), ras):
        node.AddControlPoint(list(position), label)
    expected = [LabelledPoint(label, (-r, -a, s)) for label, (r, a, s) in zip(("a", "b"), ras)]
    for storage_class, suffix in ((slicer.vtkMRMLMarkupsJsonStorageNode, ".mrk.json"),
                                  (slicer.vtkMRMLMarkupsFiducialStorageNode, ".fcsv")):
        for system, name in ((0, "RAS"), (1, "LPS")):
            storage = storage_class()
            scene.AddNode(storage)
            storage.SetCoordinateSystem(system)
            path = tmp_path / f"slicer-{name}{suffix}"
            storage.SetFileName(str(path))
            assert storage.WriteData(node)
            assert read_points(path) == expected, (suffix, name)


def test_slicer_written_point_lists_skip_points_that_are_not_placed(tmp_path):
    """Slicer keeps unplaced (preview) and cleared ("missing") control points in its files: never classify them."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    node.AddControlPoint([90.0, 30.0, -20.0], "placed")
    node.AddControlPoint([5.0, 5.0, 5.0], "unset")
    node.UnsetNthControlPointPosition(1)
    node.AddControlPoint([7.0, 7.0, 7.0], "missing")
    node.SetNthControlPointPositionMissing(2)
    expected = [LabelledPoint("placed", (-90.0, -30.0, -20.0))]
    for storage_class, suffix in ((slicer.vtkMRMLMarkupsJsonStorageNode, ".mrk.json"),
                                  (slicer.vtkMRMLMarkupsFiducialStorageNode, ".fcsv")):
        storage = storage_class()
        scene.AddNode(storage)
        path = tmp_path / f"slicer{suffix}"
        storage.SetFileName(str(path))
        assert storage.WriteData(node)
        assert read_points(path) == expected, suffix
    node.UnsetNthControlPointPosition(0)
    storage.WriteData(node)
    with pytest.raises(InputError, match=r"no placed points \(3 not placed\)"):
        read_points(path)


def test_written_markups_json_opens_in_slicer_at_the_same_place(tmp_path):
    slicer = pytest.importorskip("slicer")
    points = [LabelledPoint("N1", (12.5, -40.0, 7.25)), LabelledPoint("N2", (-3.0, 4.0, -5.0))]
    path = write_markups_json(tmp_path / "nodules.mrk.json", points)
    assert read_points(path) == points
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    assert node.GetNumberOfControlPoints() == 2
    for index, point in enumerate(points):
        np.testing.assert_allclose(node.GetNthControlPointPosition(index), point.point_ras)  # Slicer holds RAS
        assert node.GetNthControlPointLabel(index) == point.label


# ------------------------------------------------------------------------------------------- CSV


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_xyz_is_ras_by_default_and_lps_when_stated(tmp_path):
    path = write_csv(tmp_path / "p.csv", "label,x,y,z\nA,10,-20,30\n")
    assert read_points_csv(path) == [LabelledPoint("A", (-10.0, 20.0, 30.0))]
    assert read_points_csv(path, coordinate_system="LPS") == [LabelledPoint("A", (10.0, -20.0, 30.0))]


def test_csv_column_names_say_the_coordinate_system(tmp_path):
    ras = write_csv(tmp_path / "ras.csv", "r,a,s\n10,-20,30\n1,2,3\n")
    lps = write_csv(tmp_path / "lps.csv", "L, P, S, label\n10,-20,30,x\n")
    assert read_points(ras) == [LabelledPoint("P1", (-10.0, 20.0, 30.0)), LabelledPoint("P2", (-1.0, -2.0, 3.0))]
    assert read_points(lps) == [LabelledPoint("x", (10.0, -20.0, 30.0))]


def test_slicer_control_point_table_export_reads_as_ras(tmp_path):
    path = write_csv(tmp_path / "table.csv",
                     "label,r,a,s,defined,selected,visible,locked,description\nF-1,5,6,7,1,1,1,0,\n")
    assert read_points(path) == [LabelledPoint("F-1", (-5.0, -6.0, 7.0))]


def test_slicer_control_point_table_export_skips_points_not_placed(tmp_path):
    path = write_csv(tmp_path / "table.csv", "label,r,a,s,defined,selected,visible,locked,description\n"
                                             "F-1,5,6,7,1,1,1,0,\nF-2,0,0,0,0,1,1,0,\n")
    assert read_points(path) == [LabelledPoint("F-1", (-5.0, -6.0, 7.0))]
    only_unplaced = write_csv(tmp_path / "none.csv", "label,r,a,s,defined\nF-2,0,0,0,0\n")
    with pytest.raises(InputError, match="defined = 0"):
        read_points(only_unplaced)


def test_tab_separated_points_are_read(tmp_path):
    path = write_csv(tmp_path / "p.tsv", "name\tx\ty\tz\nn\t1\t2\t3\n")
    assert read_points(path, coordinate_system="LPS") == [LabelledPoint("n", (1.0, 2.0, 3.0))]


def test_csv_columns_contradicting_the_stated_system_are_refused(tmp_path):
    path = write_csv(tmp_path / "ras.csv", "r,a,s\n1,2,3\n")
    with pytest.raises(InputError, match="RAS.*LPS was requested"):
        read_points(path, coordinate_system="LPS")


@pytest.mark.parametrize("text, match", [
    ("a,b,c\n1,2,3\n", "no x,y,z"),
    ("x,y,z\n1,two,3\n", "row 2"),
    ("x,y,z\n1,2\n", "row 2"),
    ("x,y,z\n", "no points"),
    ("", "empty"),
    ("x,y,z\n1,nan,3\n", "finite"),
])
def test_bad_csv_is_refused_in_one_sentence(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_points(write_csv(tmp_path / "p.csv", text))


def test_unknown_points_file_type_and_missing_file_are_refused(tmp_path):
    with pytest.raises(InputError, match="Unknown points file type"):
        read_points(write_csv(tmp_path / "p.xlsx", "x"))
    with pytest.raises(InputError, match="does not exist"):
        read_points(tmp_path / "missing.fcsv")
    with pytest.raises(InputError, match="is a folder"):
        read_points(tmp_path)


# ------------------------------------------------------------------------------------ command line


def test_command_line_point_is_ras_unless_lps():
    assert parse_point("10,-20,30.5") == LabelledPoint("P1", (-10.0, 20.0, 30.5))
    assert parse_point("10, -20, 30.5", lps=True, label="Q") == LabelledPoint("Q", (10.0, -20.0, 30.5))
    assert parse_point("-1 2 3").point_ras == (-1.0, 2.0, 3.0)


@pytest.mark.parametrize("text", ["1,2", "1,2,3,4", "a,b,c", "", "1,,2", "inf,0,0"])
def test_malformed_command_line_point_is_refused(text):
    with pytest.raises(InputError):
        parse_point(text)


# ------------------------------------------------------------------------- memory and parsing of DICOM reads


def test_itk_messages_are_captured_not_printed(tmp_path, capfd):
    from notadiagnosis.ct_reader import itk_messages

    write_dicom_series(tmp_path, gradient_ct((16, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), THIN_UID, "gap", "s")
    (tmp_path / "s004.dcm").unlink()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sorted(str(p) for p in tmp_path.glob("*.dcm")))
    with itk_messages() as messages:
        reader.Execute()  # ITK reads the gappy series and complains about it
    assert messages and any("missing slices" in m or "Non uniform" in m for m in messages), messages
    assert "WARNING" not in capfd.readouterr().err


def test_real_lidc_series_is_held_as_int16_with_the_same_values(lidc_0001_dir):
    image = read_ct(lidc_0001_dir)
    assert image.GetPixelID() == sitk.sitkInt16
    reference = sitk.ImageSeriesReader()
    reference.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(lidc_0001_dir), LIDC_0001_SERIES_UID))
    expected = reference.Execute()  # GDCM's own order and pixel type (int32 for this series)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))
    assert image.GetOrigin() == expected.GetOrigin() and image.GetDirection() == expected.GetDirection()
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-6)


def test_real_lidc_series_headers_are_parsed_once(lidc_0001_dir, monkeypatch):
    def gdcm_scan(*args, **kwargs):
        raise AssertionError("the folder was scanned by GDCM again")

    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesIDs", staticmethod(gdcm_scan))
    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesFileNames", staticmethod(gdcm_scan))
    calls = []
    original = sitk.ImageFileReader.ReadImageInformation
    monkeypatch.setattr(sitk.ImageFileReader, "ReadImageInformation",
                        lambda self: calls.append(self.GetFileName()) or original(self))
    image = read_ct(lidc_0001_dir)
    assert image.GetSize() == (512, 512, 133)
    files = [p for p in lidc_0001_dir.iterdir() if p.is_file()]
    assert sorted(calls) == sorted(str(p) for p in files)  # each file's header once


def test_real_lidc_series_read_with_progress_is_not_copied_when_first_looked_at(lidc_0001_dir):
    # The progress callback used to keep the reader (and its pipeline's copy of the image) alive, so
    # the first look at the voxels copied the whole CT. Measured in a fresh process: the peak memory
    # must not grow when the voxels are first read.
    script = f"""
import resource, SimpleITK as sitk
from notadiagnosis.readers import read_ct
image = read_ct({str(lidc_0001_dir)!r}, progress=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
float(sitk.GetArrayViewFromImage(image).sum())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, image.GetNumberOfPixels() * 2 / 2**20)
"""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", timeout=300)
    growth_mib, image_mib = (float(v) for v in result.stdout.split())
    assert growth_mib < 0.25 * image_mib, (growth_mib, image_mib, result.stderr)


# ------------------------------------------------ a series is read as one ImageSeriesReader reads it, bit for bit


def one_reader_ct(files) -> sitk.Image:
    """The CT one ImageSeriesReader gives for these files (in this order), narrowed to int16 when every
    value fits, done here with ITK alone."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    values = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() in (sitk.sitkUInt16, sitk.sitkInt32) and values.min() >= -32768 and values.max() <= 32767:
        image = sitk.Cast(image, sitk.sitkInt16)
    return image


def assert_same_ct(image: sitk.Image, expected: sitk.Image) -> None:
    """Bit for bit: pixel type, grid and every voxel."""
    assert image.GetPixelIDTypeAsString() == expected.GetPixelIDTypeAsString()
    assert image.GetSize() == expected.GetSize()
    assert image.GetOrigin() == expected.GetOrigin()
    assert image.GetSpacing() == expected.GetSpacing()
    assert image.GetDirection() == expected.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))


@pytest.mark.shared
def test_real_lidc_series_is_bit_identical_to_one_series_reader_in_patient_order(lidc_0001_dir, monkeypatch):
    from notadiagnosis import ct_reader

    monkeypatch.setattr(ct_reader, "READ_THREADS", 2)  # headers read on two threads, whatever this machine's cores
    files = sorted(lidc_0001_dir.glob("*.dcm"), key=lambda p: float(_header(p, "0020|0032").split("\\")[2]))
    assert_same_ct(read_ct(lidc_0001_dir, progress=True), one_reader_ct(files))


def _header(path: Path, key: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData(key)


def test_series_beyond_int16_keeps_its_wider_type(tmp_path):
    ct = gradient_ct((16, 16, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    wide = sitk.GetImageFromArray((sitk.GetArrayFromImage(ct).astype(np.int32) + 41000).astype(np.uint16))
    wide.CopyInformation(ct)
    write_dicom_series(tmp_path, wide, THIN_UID, "wide", "s")
    image = read_ct(tmp_path)
    assert image.GetPixelID() == sitk.sitkUInt16 and int(sitk.GetArrayViewFromImage(image).max()) > 32767
    assert_same_ct(image, one_reader_ct(sorted(tmp_path.glob("*.dcm"))))


def test_slightly_uneven_series_is_read_with_itks_warning_once(tmp_path):
    from notadiagnosis.ct_reader import ITKMessageWarning

    # One slice 0.06 mm off: within the 10% a series may vary, but ITK says so.
    write_dicom_series(tmp_path, gradient_ct((16, 16, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), THIN_UID, "uneven", "s",
                       shifts_mm={7: 0.06})
    with pytest.warns(ITKMessageWarning) as caught:
        image = read_ct(tmp_path)
    assert_same_ct(image, one_reader_ct(sorted(tmp_path.glob("*.dcm"))))
    assert len([w for w in caught if "Non uniform sampling" in str(w.message)]) == 1


def _pixel_types_read(monkeypatch) -> list:
    """The output pixel types the series readers are asked for (None: GDCM's own), in order."""
    asked: list = []
    original_execute = sitk.ImageSeriesReader.Execute

    def execute(self):
        asked.append(self.GetOutputPixelType() if self.GetOutputPixelType() != sitk.sitkUnknown else None)
        return original_execute(self)

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", execute)
    return asked


@pytest.mark.shared
def test_real_lidc_series_is_read_straight_as_int16_once(lidc_0001_dir, monkeypatch):
    asked = _pixel_types_read(monkeypatch)
    image = read_ct(lidc_0001_dir)
    assert asked == [sitk.sitkInt16] and image.GetPixelID() == sitk.sitkInt16


@pytest.mark.parametrize("value_range, values, exact", [
    ((-33792, 31743), (-3000, 31743), True),  # signed 16 bits, intercept -1024 (LIDC's): the highest value that fits
    ((-33792, 31743), (-3000, 31744), False),  # -33,792 wrapped to 31,744: only a value below int16 lands there
    ((0, 65535), (0, 32767), True),  # unsigned 16 bits: no negative voxel, where a value above 32,767 wraps to
    ((0, 65535), (-1, 100), False),  # 65,535 wrapped to -1
    ((-1024, 3071), (-32768, 32767), True),  # a range that fits int16 cannot wrap, whatever the image holds
    ((-40000, 40000), (0, 0), False),  # a span over 65,536: never trusted
])
def test_int16_read_is_exact_unless_a_voxel_lies_where_a_wrapped_value_would(value_range, values, exact):
    from notadiagnosis.ct_reader import _exact_as_int16

    image = sitk.GetImageFromArray(np.array(values, dtype=np.int16).reshape(1, 1, 2))
    assert _exact_as_int16(image, value_range) is exact


def test_series_whose_values_wrap_in_int16_is_read_again_in_its_own_type(tmp_path, monkeypatch):
    ct = gradient_ct((16, 16, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    wide = sitk.GetImageFromArray((sitk.GetArrayFromImage(ct).astype(np.int32) + 41000).astype(np.uint16))
    wide.CopyInformation(ct)
    write_dicom_series(tmp_path, wide, THIN_UID, "wide", "s")
    asked = _pixel_types_read(monkeypatch)
    image = read_ct(tmp_path)
    assert asked == [sitk.sitkInt16, None]  # 41,000 wraps to -24,536 in int16: seen, and read again
    assert_same_ct(image, one_reader_ct(sorted(tmp_path.glob("*.dcm"))))
