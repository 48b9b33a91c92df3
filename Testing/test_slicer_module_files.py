"""Static checks of the Slicer modules: .ui widgets the code uses, CMake lists, module layout."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO

MODULES = ("SSAEAnomaly", "SSAETraining")

# The class a widget must have, by the suffix of its name (the convention both modules follow).
CLASS_BY_SUFFIX = {
    "Selector": "qMRMLNodeComboBox",
    "CheckableSelector": "qMRMLCheckableNodeComboBox",
    "CollapsibleButton": "ctkCollapsibleButton",
    "Button": "QPushButton",
    "ComboBox": "QComboBox",
    "LineEdit": "ctkPathLineEdit",
    "Slider": "ctkSliderWidget",
    "SpinBox": "QSpinBox",
    "CheckBox": "QCheckBox",
    "Label": "QLabel",
    "TableView": "qMRMLTableView",
    "TextEdit": "QPlainTextEdit",
    "Bar": "QProgressBar",
}


def _expected_class(name: str) -> str:
    for suffix in sorted(CLASS_BY_SUFFIX, key=len, reverse=True):
        if name.endswith(suffix):
            return CLASS_BY_SUFFIX[suffix]
    raise AssertionError(f"widget name {name} follows no naming convention")


@pytest.mark.parametrize("module", MODULES)
def test_every_widget_the_code_uses_exists_in_the_ui_with_the_right_class(module):
    ui = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui")
    widgets = {w.get("name"): w.get("class") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / module / f"{module}.py").read_text(encoding="utf-8")))
    assert used, "the widget uses no .ui widgets?"
    for name in sorted(used):
        assert name in widgets, f"{module}.py uses self.ui.{name}, which {module}.ui does not define"
        assert widgets[name] == _expected_class(name), f"{name} is a {widgets[name]}, expected {_expected_class(name)}"


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_name_every_module_file_and_only_existing_ones(module):
    folder = REPO / module
    cmake = (folder / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", module)
    listed = set(re.findall(r"^\s+([\w/]+\.(?:py|png|ui))\s*$", cmake, flags=re.M))
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in (".py", ".png", ".ui") and "__pycache__" not in p.parts}
    assert listed == present
    assert "WITH_GENERIC_TESTS" in cmake and f"slicer_add_python_unittest(SCRIPT {module}.py)" in cmake


def test_extension_cmake_adds_every_module_and_ships_existing_resources():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert [m for m in re.findall(r"add_subdirectory\((\w+)\)", cmake)] == list(MODULES)
    listed = set(re.findall(r"^\s+(Resources/[\w/.-]+)\s*$", cmake, flags=re.M))
    for path in listed:
        assert (REPO / path).is_file(), path
    engine_needs = {
        str(p.relative_to(REPO))
        for folder in ("Atlas", "Models", "SampleData")
        for p in (REPO / "Resources" / folder).rglob("*")
        if p.is_file()
    }
    assert engine_needs <= listed, sorted(engine_needs - listed)
    for key in ("EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_DEPENDS", "find_package(Slicer REQUIRED)"):
        assert key in cmake


@pytest.mark.parametrize("module", MODULES)
def test_module_has_template_classes_and_a_real_icon(module):
    source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    for suffix in ("", "Widget", "Logic", "Test"):
        assert re.search(rf"^class {module}{suffix}\(", source, flags=re.M), f"class {module}{suffix} missing"
    assert 'loadUI(self.resourcePath("UI/' in source
    icon = (REPO / module / "Resources" / "Icons" / f"{module}.png").read_bytes()
    assert icon.startswith(b"\x89PNG") and len(icon) > 1000


@pytest.mark.parametrize("module", MODULES)
def test_lib_runs_without_qt(module):
    """Everything in <Module>Lib imports on a machine without Slicer's Qt layer."""
    lib = REPO / module / f"{module}Lib"
    for path in lib.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import qt|from qt|import ctk|from slicer.ScriptedLoadableModule)", text, flags=re.M), path
