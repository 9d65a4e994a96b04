"""The scripted module file and its .ui, checked without Slicer: NotADiagnosis.py imports Qt, so it is
parsed (AST), not imported. Every widget the Widget code uses must exist in the .ui with a real
Slicer/Qt class that has the API used; parameters bind to widgets that can show them; nothing heavy
is imported when Slicer loads the module."""
from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from slicer_support import MODULE_DIR, MODULE_FILE, UI_FILE

# Widget classes the .ui may use, with the header Qt Designer needs for the non-Qt ones and the
# attributes/signals the module may use on them (from the Qt, CTK and Slicer headers: qMRMLTableView.h,
# qSlicerMarkupsPlaceWidget.h, qMRMLNodeComboBox.h, ctkCollapsibleButton.h).
_QWIDGET = {"enabled", "toolTip", "visible", "setVisible", "setEnabled", "connect", "setToolTip"}
WIDGET_API = {
    "QLabel": _QWIDGET | {"text", "setText", "wordWrap"},
    "QPushButton": _QWIDGET | {"text", "setText", "checkable", "checked", "clicked(bool)", "clicked()"},
    "QCheckBox": _QWIDGET | {"checked", "setChecked", "toggled(bool)", "stateChanged(int)"},
    "QComboBox": _QWIDGET | {"currentIndex", "currentText", "addItem", "clear", "currentIndexChanged(int)"},
    "QLineEdit": _QWIDGET | {"text", "setText", "placeholderText", "textChanged(QString)", "editingFinished()"},
    "ctkPathLineEdit": _QWIDGET | {"currentPath", "setCurrentPath", "nameFilters", "filters", "currentPathChanged(QString)"},
    "ctkCollapsibleButton": _QWIDGET | {"collapsed", "text"},
    "qMRMLNodeComboBox": _QWIDGET | {"currentNode", "setCurrentNode", "setMRMLScene", "nodeTypes", "sortFilterProxyModel",
                                     "currentNodeChanged(vtkMRMLNode*)"},
    "qMRMLTableView": _QWIDGET | {
        "setMRMLTableNode", "mrmlTableNode", "setMRMLScene", "sortFilterProxyModel", "tableModel", "model",
        "currentIndex", "selectionModel", "clicked(QModelIndex)", "doubleClicked(QModelIndex)", "selectionChanged()",
    },
    "qSlicerMarkupsPlaceWidget": _QWIDGET | {
        "setCurrentNode", "currentNode", "setMRMLScene", "placeMultipleMarkups", "placeModeEnabled",
        "setPlaceModeEnabled", "buttonsVisible", "deleteAllControlPointsOptionVisible",
    },
    "qMRMLWidget": _QWIDGET | {"setMRMLScene", "mrmlScene"},
}
CUSTOM_WIDGET_BASES = {
    "ctkCollapsibleButton": "QWidget",
    "ctkPathLineEdit": "QWidget",
    "qMRMLNodeComboBox": "QWidget",
    "qMRMLTableView": "QTableView",
    "qMRMLWidget": "QWidget",
    "qSlicerWidget": "QWidget",
    "qSlicerMarkupsPlaceWidget": "qSlicerWidget",
}
QT_CLASSES = {"QLabel", "QPushButton", "QCheckBox", "QComboBox", "QLineEdit", "QWidget"}
MRML_SCENE_AWARE = {"qMRMLNodeComboBox", "qMRMLTableView", "qSlicerMarkupsPlaceWidget", "qMRMLWidget"}

# Modules that may be imported when Slicer loads the module file: all already loaded by Slicer itself, and the
# logic's devices file, which loads only the standard library (test_logic_package_imports_neither_torch_nor_qt).
ALLOWED_FILE_SCOPE_IMPORTS = {
    "contextlib", "logging", "os", "pathlib", "typing", "vtk", "slicer", "slicer.i18n", "slicer.parameterNodeWrapper",
    "slicer.ScriptedLoadableModule", "slicer.util", "vtkSlicerMarkupsModuleMRMLPython",
    "vtkSlicerSegmentationsModuleMRMLPython", "nadslicer.devices",
}


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


@pytest.fixture(scope="module")
def ui_widgets() -> dict:
    """name -> class of every widget in the .ui."""
    root = ElementTree.parse(UI_FILE).getroot()
    widgets = {}
    for element in root.iter("widget"):
        name = element.get("name")
        assert name not in widgets, f"widget name {name} used twice in the .ui"
        widgets[name] = element.get("class")
    return widgets


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE_FILE.name}")


def _ui_uses(tree: ast.Module) -> dict:
    """widget name -> attributes and signal strings the Widget code uses on ``self.ui.<name>``."""
    uses: dict = {}
    for node in ast.walk(_class(tree, "NotADiagnosisWidget")):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            uses.setdefault(node.attr, set())
    for node in ast.walk(_class(tree, "NotADiagnosisWidget")):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner = node.value
            if (isinstance(inner.value, ast.Attribute) and inner.value.attr == "ui"
                    and isinstance(inner.value.value, ast.Name) and inner.value.value.id == "self"):
                uses[inner.attr].add(node.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.func.value, ast.Attribute)
                and isinstance(node.func.value.value, ast.Attribute) and node.func.value.value.attr == "ui"):
            uses[node.func.value.attr].add(node.args[0].value)
    return uses


def test_every_widget_the_code_uses_exists_in_the_ui_with_that_api(module_tree, ui_widgets):
    uses = _ui_uses(module_tree)
    assert {"classifyButton", "resultsTableView", "placeWidget", "statusLabel", "disclaimerLabel", "loadSampleButton",
            "modelInfoLabel", "modelPathLineEdit", "inputVolumeSelector"} <= uses.keys()
    for name, attributes in uses.items():
        assert name in ui_widgets, f"self.ui.{name} is used but the .ui has no widget named {name}"
        widget_class = ui_widgets[name]
        assert widget_class in WIDGET_API, f"{name} is a {widget_class}, not a class the module knows"
        unknown = attributes - WIDGET_API[widget_class]
        assert not unknown, f"self.ui.{name} ({widget_class}) has no {sorted(unknown)}"


def test_ui_classes_are_real_qt_or_declared_slicer_widgets(ui_widgets):
    root = ElementTree.parse(UI_FILE).getroot()
    declared = {
        element.findtext("class"): (element.findtext("extends"), element.findtext("header"))
        for element in root.iter("customwidget")
    }
    for name, widget_class in ui_widgets.items():
        assert widget_class in QT_CLASSES or widget_class in declared, f"{name}: {widget_class} is neither Qt nor declared"
    for widget_class, (extends, header) in declared.items():
        assert CUSTOM_WIDGET_BASES.get(widget_class) == extends, f"{widget_class} must extend {CUSTOM_WIDGET_BASES.get(widget_class)}"
        assert header == f"{widget_class}.h"
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "NotADiagnosis")


def test_every_mrml_widget_receives_the_scene(ui_widgets):
    root = ElementTree.parse(UI_FILE).getroot()
    receivers = set()
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in ui_widgets and connection.findtext("receiver") in ui_widgets
        assert connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        assert connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
        receivers.add(connection.findtext("receiver"))
    needing_scene = {name for name, cls in ui_widgets.items() if cls in MRML_SCENE_AWARE and name != "NotADiagnosis"}
    assert needing_scene == receivers


def _parameters(tree: ast.Module) -> dict:
    """parameter name -> annotation source of the parameter node wrapper."""
    cls = _class(tree, "NotADiagnosisParameterNode")
    assert any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in cls.decorator_list)
    return {node.target.id: ast.unparse(node.annotation) for node in cls.body if isinstance(node, ast.AnnAssign)}


def _bound_widgets() -> dict:
    """parameter name -> (widget class, nodeTypes) for widgets with the SlicerParameterName property."""
    root = ElementTree.parse(UI_FILE).getroot()
    bound = {}
    for element in root.iter("widget"):
        properties = {p.get("name"): p for p in element.findall("property")}
        if "SlicerParameterName" in properties:
            assert properties["SlicerParameterName"].get("stdset") == "0", "dynamic properties need stdset=0"
            name = properties["SlicerParameterName"].findtext("string")
            node_types = [s.text for s in properties["nodeTypes"].iter("string")] if "nodeTypes" in properties else []
            bound[name] = (element.get("class"), node_types)
    return bound


def test_bound_widgets_can_show_their_parameter_type(module_tree):
    parameters = _parameters(module_tree)
    bound = _bound_widgets()
    assert set(bound) <= set(parameters), f"unknown parameters in the .ui: {set(bound) - set(parameters)}"
    assert {"inputVolume", "pointList", "device", "testTimeAugmentation", "computeSaliency", "useBundledModel",
            "modelPath", "modelSha256", "replacePreviousResults", "measureNodules"} <= set(bound)
    for name, (widget_class, node_types) in bound.items():
        annotation = parameters[name]
        if annotation.startswith("vtkMRML"):
            # parameterNodeWrapper's node connector needs exactly qMRMLNodeComboBox.
            assert widget_class == "qMRMLNodeComboBox" and node_types == [annotation], name
        elif annotation == "bool":
            assert widget_class == "QCheckBox", name
        elif annotation.startswith("Annotated[str, Choice("):
            assert widget_class == "QComboBox", name
        elif annotation == "pathlib.Path":
            # Slicer's ctkPathLineEditToPathConnector: exactly ctkPathLineEdit, for pathlib types.
            assert widget_class == "ctkPathLineEdit", name
        elif annotation == "str":
            # QLineEditToStrConnector requires type(widget) == qt.QLineEdit.
            assert widget_class == "QLineEdit", name
        else:
            raise AssertionError(f"no widget rule for {name}: {annotation}")


def test_every_panel_device_choice_runs_on_a_library_runtime_and_device():
    from nadslicer.devices import DEVICE_CHOICES, placement_for
    from notadiagnosis.errors import InputError
    from notadiagnosis.runtime import DEVICE_CHOICES as LIBRARY_DEVICES, RUNTIMES

    placed = 0
    for choice in DEVICE_CHOICES:
        try:
            placement = placement_for(choice)
        except InputError:  # GPU on a machine without one: refused with a fix, never a wrong device
            continue
        assert placement.runtime in RUNTIMES and placement.device in LIBRARY_DEVICES, choice
        placed += 1
    assert placed >= 2  # Auto and CPU place everywhere


def _file_scope_imports(tree: ast.Module) -> set:
    """Modules imported when the file is executed: module body and class bodies, not function bodies."""
    found = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module)
        elif isinstance(node, ast.ClassDef):
            pending.extend(node.body)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending.extend(ast.iter_child_nodes(node))
    return found


def test_module_file_imports_nothing_heavy_at_file_scope(module_tree):
    imports = _file_scope_imports(module_tree)
    assert imports <= ALLOWED_FILE_SCOPE_IMPORTS, f"heavy or unexpected file-scope imports: {imports - ALLOWED_FILE_SCOPE_IMPORTS}"
    # The logic package is imported inside functions, where it is needed; the library (and with it the
    # inference runtime) only through nadslicer, whose runtime import is inside the panel's error handling.
    inner = {node.module for node in ast.walk(module_tree) if isinstance(node, ast.ImportFrom)}
    inner |= {alias.name for node in ast.walk(module_tree) if isinstance(node, ast.Import) for alias in node.names}
    assert any(name.startswith("nadslicer") for name in inner)
    assert not any(name.startswith("notadiagnosis") for name in inner), "the module file imports the library directly"


def test_logic_package_imports_neither_torch_nor_qt():
    """Importing the logic loads numpy, SimpleITK and MRML only; the validation used on every UI change
    loads not even those. torch arrives with the first classifier."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import nadslicer.validation, nadslicer.model_info, nadslicer.library, nadslicer.devices;"
        "heavy = {'numpy', 'SimpleITK', 'torch', 'notadiagnosis'} & set(sys.modules);"
        "assert not heavy, heavy;"
        "import nadslicer.logic, nadslicer.results, nadslicer.volumes, nadslicer.points, nadslicer.dependencies, nadslicer.errors,"
        " nadslicer.devices, nadslicer.background, nadslicer.library, nadslicer.sample_data;"
        "bad = {'torch', 'qt', 'ctk', 'PythonQt', 'slicer.ScriptedLoadableModule'} & set(sys.modules);"
        "assert not bad, bad"
    )
    completed = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]


def _string_assigned(tree: ast.Module, attribute: str) -> str:
    for node in ast.walk(_class(tree, "NotADiagnosis")):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) and node.targets[0].attr == attribute:
            value = node.value.args[0] if isinstance(node.value, ast.Call) else node.value
            return ast.literal_eval(value)
    raise AssertionError(f"{attribute} not set")


def test_help_says_not_a_diagnosis_and_how_to_cite_lidc(module_tree):
    help_text = _string_assigned(module_tree, "helpText")
    assert "Not a diagnosis" in help_text
    assert "doi:10.1118/1.3528204" in help_text and "10.7937/K9/TCIA.2015.LO9QL9SX" in help_text
    assert "LIDC/IDRI" in _string_assigned(module_tree, "acknowledgementText")
    assert _string_assigned(module_tree, "title") == "Not a Diagnosis"


def test_disclaimer_is_visible_in_the_panel(module_tree, ui_widgets):
    from nadslicer.model_info import library_disclaimer
    from notadiagnosis.disclaimer import DISCLAIMER, REMINDER

    assert ui_widgets["disclaimerLabel"] == "QLabel"
    # The panel shows the library's wording, read from its one home without importing the library.
    disclaimer = library_disclaimer()
    assert disclaimer == DISCLAIMER and disclaimer.startswith("Not a diagnosis")
    setup = next(node for node in ast.walk(_class(module_tree, "NotADiagnosisWidget"))
                 if isinstance(node, ast.FunctionDef) and node.name == "setup")
    assert any(isinstance(node, ast.Call) and getattr(node.func, "id", "") == "library_disclaimer"
               for node in ast.walk(setup))
    # Before (or without) the library, the .ui shows the short form.
    root = ElementTree.parse(UI_FILE).getroot()
    label = next(e for e in root.iter("widget") if e.get("name") == "disclaimerLabel")
    assert label.find("property[@name='text']").findtext("string") == REMINDER


def test_self_test_runs_every_test_and_nothing_else_looks_like_one(module_tree):
    """Slicer 5.8's ScriptedLoadableModuleTest runs every method with 'test' in its name."""
    cls = _class(module_tree, "NotADiagnosisTest")
    methods = [node.name for node in cls.body if isinstance(node, ast.FunctionDef)]
    tests = [name for name in methods if name.startswith("test_")]
    assert len(tests) >= 3
    assert all(name.startswith("test_") for name in methods if "test" in name)
    run_test = next(node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "runTest")
    called = {node.func.attr for node in ast.walk(run_test) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert set(tests) <= called
