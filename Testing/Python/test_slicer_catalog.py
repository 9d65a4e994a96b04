"""The Slicer ExtensionsIndex catalog entry (ExtensionsIndex/NotADiagnosis.json): valid against the
catalog entry schema v1.0.2 and in agreement with the extension's top-level CMakeLists.txt.

The schema (Slicer/ExtensionsIndex schemas/slicer-extension-catalog-entry-schema-v1.0.2.json, under
the 3D Slicer license) is not copied here; its constraints are encoded below: an object with the
required keys ``$schema``, ``category`` and ``scm_url``, no keys beyond the listed optional ones, and
their types (``scm_type`` one of git/local, ``tier`` an integer from 1 to 5)."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from slicer_support import REPO_ROOT

CATALOG_ENTRY = REPO_ROOT / "ExtensionsIndex" / "NotADiagnosis.json"
TOP_CMAKE = REPO_ROOT / "CMakeLists.txt"
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"

CATALOG_ENTRY_CONSTRAINTS_V1_0_2 = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "dicom_support_rule": {"type": "string"},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}


def _entry() -> dict:
    return json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))


def _cmake_extension_variables() -> dict:
    text = TOP_CMAKE.read_text(encoding="utf-8")
    return dict(re.findall(r'^set\((EXTENSION_\w+)\s+"([^"]*)"\)', text, flags=re.MULTILINE))


def test_catalog_entry_is_valid_against_schema_v1_0_2():
    jsonschema.Draft7Validator.check_schema(CATALOG_ENTRY_CONSTRAINTS_V1_0_2)
    entry = _entry()
    jsonschema.validate(entry, CATALOG_ENTRY_CONSTRAINTS_V1_0_2, cls=jsonschema.Draft7Validator)
    assert entry["$schema"] == SCHEMA_URL


@pytest.mark.parametrize(
    "change",
    [
        {"homepage": "https://example.org"},  # not a key of the schema
        {"tier": 0},
        {"tier": 6},
        {"scm_type": "svn"},
        {"build_dependencies": "PyTorch"},
        {"enabled": "yes"},
    ],
    ids=["unknown-key", "tier-0", "tier-6", "scm-type", "dependencies-not-list", "enabled-not-bool"],
)
def test_the_encoded_constraints_reject_invalid_entries(change):
    entry = {**_entry(), **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(entry, CATALOG_ENTRY_CONSTRAINTS_V1_0_2, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("key", ["$schema", "category", "scm_url"])
def test_the_encoded_constraints_require_the_required_keys(key):
    entry = _entry()
    del entry[key]
    with pytest.raises(jsonschema.ValidationError, match="required"):
        jsonschema.validate(entry, CATALOG_ENTRY_CONSTRAINTS_V1_0_2, cls=jsonschema.Draft7Validator)


def test_catalog_entry_agrees_with_the_extension_cmake():
    entry = _entry()
    variables = _cmake_extension_variables()
    assert entry["category"] == variables["EXTENSION_CATEGORY"]
    assert entry["scm_url"] == variables["EXTENSION_HOMEPAGE"] + ".git"
    depends = [] if variables["EXTENSION_DEPENDS"] == "NA" else variables["EXTENSION_DEPENDS"].split(";")
    assert entry.get("build_dependencies", []) == depends
    assert entry.get("scm_type", "git") == "git"
    assert entry.get("build_subdirectory", ".") == "."


def test_top_level_cmake_describes_the_extension():
    variables = _cmake_extension_variables()
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                 "EXTENSION_ICONURL", "EXTENSION_DEPENDS", "EXTENSION_README_FILE", "EXTENSION_LICENSE_FILE"):
        assert variables.get(name), f"{name} is empty"
    assert "Not a diagnosis" in variables["EXTENSION_DESCRIPTION"]
    assert variables["EXTENSION_ICONURL"].endswith("NotADiagnosis/Resources/Icons/NotADiagnosis.png")
    # No PyTorch extension (nor any other): the module installs its small wheels itself.
    assert variables["EXTENSION_DEPENDS"] == "NA"
    for name, file_name in (("EXTENSION_README_FILE", "README.md"), ("EXTENSION_LICENSE_FILE", "LICENSE")):
        assert variables[name] == "${CMAKE_CURRENT_SOURCE_DIR}/" + file_name and (REPO_ROOT / file_name).is_file()
    text = TOP_CMAKE.read_text(encoding="utf-8")
    assert text.index("EXTENSION_LICENSE_FILE") < text.index("include(${Slicer_USE_FILE})")
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(NotADiagnosis)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, f"{line} missing from CMakeLists.txt"


def test_names_follow_the_extensions_index_conventions():
    """The index's checks: project() name equals the catalog file's name, the extension name does not
    start with 'Slicer', the repository name does; the category is one the index accepts."""
    project = re.search(r"^project\(\s*([^\s)]+)", TOP_CMAKE.read_text(encoding="utf-8"), flags=re.MULTILINE).group(1)
    assert project == CATALOG_ENTRY.stem == "NotADiagnosis"
    assert not project.lower().startswith("slicer")
    repository = _entry()["scm_url"].rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    assert repository.startswith("Slicer")
    assert _entry()["category"] in {"Analysis", "Quantification", "Segmentation", "Informatics", "Chest Imaging Platform"}
