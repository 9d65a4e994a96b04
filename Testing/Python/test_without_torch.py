"""Inference without torch: classify, saliency and the demo in a process where ``import torch`` fails
(as after ``pip install notadiagnosis``, which pulls neither torch, safetensors nor onnx)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Run before anything else in the child: every import of these packages fails, as if they were not installed.
BLOCKER = textwrap.dedent('''
    import sys

    BLOCKED = {"torch", "safetensors", "onnx"}

    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
''')


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, encoding="utf-8", timeout=600)


def test_the_blocker_really_blocks_torch(tmp_path):
    result = run_without_torch("import torch\n", tmp_path)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_demo_classify_and_saliency_run_without_torch(tmp_path):
    result = run_without_torch('''
        import json, sys
        from notadiagnosis.cli import main

        assert main(["demo", "--out", "demo"]) == 0
        code = main(["classify", "demo/synthetic-chest-ct.nrrd", "--points", "demo/synthetic-nodules.mrk.json",
                     "--saliency", "maps", "--json"])
        assert code == 0
        print("MODULES", json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)))
    ''', tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MODULES []" in result.stdout
    demo = json.loads((tmp_path / "demo" / "results.json").read_text(encoding="utf-8"))
    assert demo["runtime"] == "onnxruntime" and "ONNX Runtime" in demo["device"]
    assert len(demo["points"]) == 4 and all(0.0 < p["probability"] < 1.0 for p in demo["points"])
    assert all((tmp_path / p["saliency"]).is_file() for p in demo["points"])
    classified = json.loads(result.stdout[result.stdout.index('{\n  "disclaimer"'):result.stdout.index("MODULES")])
    # The same CT and points through the CLI give the demo's probabilities.
    assert [p["probability"] for p in classified["points"]] == pytest.approx([p["probability"] for p in demo["points"]])
    assert len(list((tmp_path / "maps").glob("*-saliency.nrrd"))) == 4


def test_the_classifier_api_runs_without_torch(tmp_path):
    result = run_without_torch('''
        import numpy as np
        from notadiagnosis import Classifier
        from notadiagnosis.synthetic import make_synthetic_chest_ct

        image, nodules = make_synthetic_chest_ct(seed=1)
        classifier = Classifier.load()
        predictions = classifier.predict(image, [n["center_lps"] for n in nodules])
        saliency = classifier.saliency(image, nodules[0]["center_lps"])
        peak = float(np.max(__import__("SimpleITK").GetArrayViewFromImage(saliency)))
        print("RESULT", classifier.runtime, len(predictions), 0.5 < peak <= 1.0)
    ''', tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RESULT onnxruntime 4 True" in result.stdout


def test_asking_for_the_torch_runtime_without_torch_says_what_to_install(tmp_path):
    result = run_without_torch('''
        import sys
        from notadiagnosis.cli import main

        sys.exit(main(["info", "--runtime", "torch"]))
    ''', tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("notadiagnosis: error: The torch runtime needs torch")
    assert "pip install 'notadiagnosis[torch]'" in result.stderr
