"""The `lidc` source end to end on the real LIDC-IDRI-0001 case in ../shared."""
from __future__ import annotations

import numpy as np
import pytest

from nadtrain.cli import main
from nadtrain.dataset import load_dataset
from nadtrain.nodules import LidcError

pytestmark = pytest.mark.shared


def test_lidc_source_cuts_the_real_malignant_nodule_of_lidc_0001(tmp_path, lidc_root, lidc_0001_dir, small_table, capsys):
    out = tmp_path / "lidc"
    code = main(["build", "lidc", "--out", str(out), "--lidc-root", str(lidc_root), "--nodule-table", str(small_table),
                 "--workers", "1", "--quiet"])
    assert code == 0
    assert "labelled_nodules_not_downloaded 1" in capsys.readouterr().out
    data = load_dataset(out)
    assert data.manifest["source"] == "lidc" and data.manifest["complete"] is True
    assert list(data.nodule_ids) == ["LIDC-IDRI-0001/n0"] and list(data.labels) == [1]
    assert list(data.patient_ids) == ["LIDC-IDRI-0001"] and list(data.background) == [""]
    row = data.nodule_table()["LIDC-IDRI-0001/n0"]
    assert row["centroid_source"] == "dicom" and row["centroid_x_lps"] is not None and row["median_malignancy"] == 5.0
    patch = data.patches_hu[0].astype(np.float32)
    centre = patch[28:36, 28:36, 28:36].mean()
    assert centre > -100.0  # the 33 mm solid nodule fills the patch centre
    assert patch.min() <= -800.0  # lung parenchyma around it
    # Rerunning the same command finds the dataset complete and writes nothing new.
    assert main(["build", "lidc", "--out", str(out), "--lidc-root", str(lidc_root), "--nodule-table", str(small_table),
                 "--workers", "1", "--quiet"]) == 0
    assert len(load_dataset(out)) == 1


def test_lidc_source_without_a_folder_is_a_one_sentence_error(tmp_path, small_table, capsys):
    code = main(["build", "lidc", "--out", str(tmp_path / "x"), "--lidc-root", str(tmp_path / "missing"),
                 "--nodule-table", str(small_table), "--quiet"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_lidc_root_without_any_labelled_patient_is_refused(tmp_path, small_table):
    from argparse import Namespace

    from nadtrain.sources import lidc

    (tmp_path / "LIDC-IDRI-0999").mkdir()
    args = Namespace(lidc_root=tmp_path, nodule_table=small_table, min_readers=1, workers=1, quiet=True, limit=None,
                     out=str(tmp_path / "out"), overwrite=False)
    with pytest.raises(LidcError, match="none of the labelled"):
        lidc.build(args)


def test_lidc_root_defaults_to_pylidcs_own_setting(tmp_path, monkeypatch):
    from nadtrain.sources.lidc import resolve_lidc_root

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(LidcError, match="pylidcrc"):
        resolve_lidc_root(None)
    (tmp_path / "data").mkdir()
    (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path / 'data'}\n")
    assert resolve_lidc_root(None) == tmp_path / "data"
    assert resolve_lidc_root(tmp_path) == tmp_path  # the option wins
