"""The module's Slicer self-test (NotADiagnosisTest) run on headless MRML, outside Slicer.

NotADiagnosis.py needs Slicer's Qt layer only for its base classes, the parameter node wrapper and
translations; those are replaced here by minimal stand-ins so that the self-test's logic tests run
against slicer-core's real MRML: the library's synthetic chest CT, points on its nodules, the module
Logic, the checks on the table, saliency volume, unchanged inputs and refused inputs. The widget test
needs Qt and is left to Slicer. The classifier is the bundled default model, as in Slicer.

Slicer's test harness runs the self-test with --testing, where nothing may be installed: with the
packages present the tests pass (offline); with one missing they are skipped, naming it."""
from __future__ import annotations

import types

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML, headless) is needed for the module's tests")

from slicer_support import load_module_file  # noqa: E402


@pytest.fixture
def module(monkeypatch, tmp_path):
    """NotADiagnosis.py loaded with the stand-ins, a fresh scene as slicer.mrmlScene, and the logic's
    classifier cache answering with the bundled default model on the CPU."""
    from nadslicer import logic
    from notadiagnosis.classifier import Classifier

    default_model = Classifier.load(device="cpu")
    monkeypatch.setattr(logic, "get_classifier", lambda model_path=None, device="Auto", expected_sha256="": default_model)
    module = load_module_file(monkeypatch)
    connected = []
    app = types.SimpleNamespace(testingEnabled=lambda: True, connect=lambda signal, slot: connected.append((signal, slot)))
    monkeypatch.setattr(slicer, "app", app, raising=False)  # as under ctest
    module.connected = connected
    return module


def test_module_file_loads_and_describes_the_module(module):
    parent = types.SimpleNamespace()
    module.NotADiagnosis(parent)
    assert parent.title == "Not a Diagnosis"
    assert "Not a diagnosis" in parent.helpText and "LIDC" in parent.helpText
    assert module.NotADiagnosisParameterNode.__annotations__["pointList"] is slicer.vtkMRMLMarkupsFiducialNode
    assert "Markups" in parent.dependencies
    assert module.connected == [("startupCompleted()", module.registerSampleData)]


@pytest.mark.slow
def test_self_test_classifies_the_synthetic_nodules(module):
    case = module.NotADiagnosisTest("test_NotADiagnosis_classifies_synthetic_nodules")
    case.setUp()
    case.test_NotADiagnosis_classifies_synthetic_nodules()
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1


@pytest.mark.parametrize("name", ["test_NotADiagnosis_classifies_synthetic_nodules", "test_NotADiagnosis_refuses_bad_inputs"])
def test_in_testing_mode_missing_packages_skip_the_tests_that_need_them(module, monkeypatch, name):
    import unittest

    from nadslicer import dependencies

    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: ["onnxruntime>=1.17"])
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda *args, **kwargs: pytest.fail("nothing may be installed in testing mode")
    monkeypatch.setitem(__import__("sys").modules, "slicer.packaging", packaging)
    case = module.NotADiagnosisTest(name)
    result = unittest.TestResult()
    case.run(result)
    assert result.errors == [] and result.failures == []
    assert len(result.skipped) == 1 and "onnxruntime>=1.17" in result.skipped[0][1]
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


@pytest.mark.slow
def test_self_test_refuses_the_bad_inputs(module):
    case = module.NotADiagnosisTest("test_NotADiagnosis_refuses_bad_inputs")
    case.setUp()
    case.test_NotADiagnosis_refuses_bad_inputs()
