"""The READMEs' Python examples run as written, against the CT that `notadiagnosis demo` writes."""
import re
from pathlib import Path

import pytest
import SimpleITK as sitk

from notadiagnosis.cli import DEMO_CT_NAME
from notadiagnosis.synthetic import make_synthetic_chest_ct

REPO_ROOT = Path(__file__).resolve().parents[2]
READMES = [REPO_ROOT / "README.md", REPO_ROOT / "NotADiagnosisLib" / "README.md"]


def python_blocks(readme: Path) -> list:
    return re.findall(r"^```python\n(.*?)^```", readme.read_text(encoding="utf-8"), re.M | re.S)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / "demo-output").mkdir()
    image, _ = make_synthetic_chest_ct(seed=0)
    sitk.WriteImage(image, str(folder / "demo-output" / DEMO_CT_NAME), True)
    return folder


@pytest.mark.parametrize("readme", READMES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_the_readme_python_examples_run_and_measure_the_demo_nodule(readme, demo_folder, monkeypatch):
    blocks = python_blocks(readme)
    assert blocks, f"{readme} has no Python example"
    monkeypatch.chdir(demo_folder)
    namespace: dict = {}
    for block in blocks:  # later blocks use the names earlier ones define, as a reader would
        exec(compile(block, f"{readme.name} example", "exec"), namespace)
    # Both examples click the demo's 22 mm spiculated nodule: it is found and measured, not invented.
    measured = namespace.get("m") or namespace["result"].measurement
    assert measured is not None and 15.0 < measured.long_axis_mm < 30.0
