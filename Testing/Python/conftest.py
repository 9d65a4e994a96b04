"""Shared fixtures. Real data lives in ../shared (or $NOTADIAGNOSIS_SHARED).

When it is absent, tests that need it skip with a reason, unless NOTADIAGNOSIS_REQUIRE_SHARED=1
(set by .ci/run), which turns the skip into a failure so CI always runs them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIDC_0001_SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def _shared_dir() -> Path:
    return Path(os.environ.get("NOTADIAGNOSIS_SHARED", REPO_ROOT.parent / "shared")).resolve()


def _need(path: Path) -> Path:
    if path.exists():
        return path
    message = f"real data not found at {path} (set NOTADIAGNOSIS_SHARED or put shared/ beside the repository)"
    if os.environ.get("NOTADIAGNOSIS_REQUIRE_SHARED") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(_shared_dir())


@pytest.fixture(scope="session")
def lidc_root(shared_dir: Path) -> Path:
    """Folder holding LIDC-IDRI-0001/ (pylidc's `path` setting points here)."""
    return _need(shared_dir / "data" / "lidc")


@pytest.fixture(scope="session")
def lidc_0001_dir(lidc_root: Path) -> Path:
    return _need(lidc_root / "LIDC-IDRI-0001")


@pytest.fixture(scope="session")
def chest_ct_path(shared_dir: Path) -> Path:
    return _need(shared_dir / "data" / "chest_ct" / "cptac-C3N-00247.nrrd")


@pytest.fixture(scope="session")
def small_table(tmp_path_factory, lidc_root: Path) -> Path:
    """The nodule table (CSV) of two patients: LIDC-IDRI-0001 (its scan in ../shared) and
    LIDC-IDRI-0002 (whose scan is on no disk here: its nodules count as not downloaded)."""
    from nadtrain.nodule_table import write_nodule_table
    from nadtrain.nodules import build_nodule_table

    rows, failures = build_nodule_table(workers=1, patient_ids=["LIDC-IDRI-0001", "LIDC-IDRI-0002"], progress=False)
    assert failures == []
    path = tmp_path_factory.mktemp("table") / "nodules.csv"
    write_nodule_table(path, rows)
    return path
