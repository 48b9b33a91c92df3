"""Slicer's Python environment for the modules' widget code, outside the Slicer application.

Real parts: the MRML scene, nodes and logic from the ``slicer-core`` wheel, and Slicer's real
``slicer.util`` (dialog helpers, ``tryWithErrorDisplay``, ``VTKObservationMixin``,
``childWidgetVariables``, ``loadUI``, ``settingsValue`` ...). Doubles, where only the Qt
application can provide the real thing:

* ``qt`` and ``ctk``: widget classes whose properties, signals and slots are the real ones
  (:mod:`.api`, from the Qt 5.15 / CTK / Slicer headers) and behave as PythonQt and Qt do
  (:mod:`.qobject`, :mod:`.widgets`); ``.ui`` files are built and checked by :mod:`.ui_loader`;
* ``slicer.app``: the few qSlicerApplication members the modules and ``slicer.util`` use
  (version, cursors, ``startupCompleted()``/``aboutToQuit()``, the module manager, no main
  window unless a test asks for one); message boxes (``ctk.ctkMessageBox``) and file dialogs
  answer from a script the test writes and record what the user would have seen;
* ``slicer.ScriptedLoadableModule`` and ``SampleData``: :mod:`.loadable` and
  :mod:`.sample_data` restate Slicer 5.12.3's contracts; with ``SLICER_SOURCE_DIR`` pointing at a
  Slicer source tree, Slicer's real files are used instead.

A :class:`Session` installs all of this for one test (``monkeypatch`` undoes it) and drives the
module lifecycle as Slicer does: import, ``startupCompleted()``, widget creation with a parent
panel, ``setup()``, ``enter()``/``exit()``, File > Close Scene, reload and unload.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer

from . import widgets
from .qobject import REFUSED_CONNECTIONS, QObjectDouble
from .ui_loader import QFile, QUiLoader

HERE = Path(__file__).resolve().parent


@dataclass
class Dialog:
    """One message box or file dialog the user would have seen."""

    kind: str
    title: str
    text: str
    detail: str = ""


class QMessageBox:
    NoButton, Ok, Cancel, Yes, No = 0x0, 0x400, 0x400000, 0x4000, 0x10000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


class Qt:
    WaitCursor, ArrowCursor = 16, 0
    Unchecked, PartiallyChecked, Checked = 0, 1, 2


class QSettings:
    store: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self.store.get(key, default)

    def setValue(self, key: str, value: Any) -> None:
        self.store[key] = value

    def contains(self, key: str) -> bool:
        return key in self.store


class _Signals:
    """Signals of a non-widget application object (not in the header data: kept to what is used)."""

    def __init__(self, *signatures: str) -> None:
        self._slots: dict[str, list] = {s: [] for s in signatures}

    def connect(self, signal: str, slot: Any) -> bool:
        if signal not in self._slots:
            REFUSED_CONNECTIONS.append(f"{type(self).__name__}::{signal}")
            return False
        self._slots[signal].append(slot)
        return True

    def disconnect(self, signal: str, slot: Any) -> bool:
        if slot in self._slots.get(signal, []):
            self._slots[signal].remove(slot)
            return True
        return False

    def emit(self, signal: str, *args: Any) -> None:
        """Slots in connection order; one disconnected while the signal is being emitted is not
        called (Qt 5 skips a connection removed during ``QMetaObject::activate``)."""
        for slot in list(self._slots[signal]):
            if slot in self._slots[signal]:
                slot(*args)


class ModuleManager(_Signals):
    def __init__(self) -> None:
        super().__init__("moduleAboutToBeUnloaded(QString)", "moduleLoaded(QString)")


class Application(_Signals):
    """``slicer.app``: qSlicerApplication's members that the modules and slicer.util use."""

    applicationName = "Slicer"

    def __init__(self, version: tuple[int, int]) -> None:
        super().__init__("startupCompleted()", "aboutToQuit()")
        self.majorVersion, self.minorVersion = version
        self.cursors: list[int] = []
        self.manager = ModuleManager()
        self.main_window: Any = None
        self.loaded_modules: list[str] = []
        # qSlicerCoreApplication's constructor: its own slot is the first on aboutToQuit(), so
        # every module is unloaded (widgets' cleanup()) before any slot a module connects runs.
        self.connect("aboutToQuit()", self._onAboutToQuit)

    def _onAboutToQuit(self) -> None:
        """``qSlicerCoreApplication::onAboutToQuit``: ``factoryManager()->unloadModules()``."""
        for name in list(self.loaded_modules):
            self.manager.emit("moduleAboutToBeUnloaded(QString)", name)
        self.loaded_modules.clear()

    def testingEnabled(self) -> bool:
        return False

    def setOverrideCursor(self, cursor: int) -> None:
        self.cursors.append(cursor)

    def restoreOverrideCursor(self) -> None:
        if self.cursors:
            self.cursors.pop()

    def processEvents(self) -> None:
        pass

    def moduleManager(self) -> ModuleManager:
        return self.manager

    def topLevelWidgets(self) -> list:
        return [self.main_window] if self.main_window is not None else []

    def layoutManager(self) -> None:
        return None


class MainWindow:
    """The main window, for ``slicer.util.selectModule`` (found by its object name, as slicer.util does)."""

    objectName = "qSlicerMainWindow"

    def __init__(self) -> None:
        self.selected: list[str] = []

    def moduleSelector(self) -> MainWindow:
        return self

    def selectModule(self, name: str) -> None:
        self.selected.append(name)


@dataclass
class ModuleParent:
    """The C++ qSlicerScriptedLoadableModule that a ScriptedLoadableModule decorates."""

    path: str
    title: str = ""
    categories: list | None = None
    dependencies: list | None = None
    contributors: list | None = None
    helpText: str = ""
    acknowledgementText: str = ""
    icon: Any = None


class ModuleHarness:
    """One scripted module as Slicer loads and shows it."""

    def __init__(self, session: Session, name: str, path: Path) -> None:
        self.session, self.name, self.path = session, name, path
        self.python_module = session.import_file(name, path)
        self.module = getattr(self.python_module, name)(ModuleParent(path=str(path)))
        self.panel: Any = None
        self.widget: Any = None
        self.unloaded = False
        slicer.modules.__dict__[name.lower()] = types.SimpleNamespace(path=str(path), name=name)
        slicer.app.loaded_modules.append(name)

    def create_widget(self) -> Any:
        """What qSlicerScriptedLoadableModuleWidget does: a panel with a vertical layout, the
        Python widget constructed with it as parent, then ``setup()``."""
        self.panel = widgets.QWidget()
        self.panel.setLayout(widgets.QVBoxLayout())
        self.widget = getattr(self.python_module, self.name + "Widget")(self.panel)
        self.widget.setup()
        return self.widget

    def enter(self) -> None:
        if hasattr(self.widget, "enter"):
            self.widget.enter()

    def exit(self) -> None:
        if hasattr(self.widget, "exit"):
            self.widget.exit()

    def reload(self) -> Any:
        """``slicer.util.reloadScriptedModule``: the main file is executed again (its Lib packages
        stay imported), ``cleanup()`` runs on the old widget, a new one is set up; no ``enter()``."""
        self.python_module = self.session.import_file(self.name, self.path)
        self.widget.cleanup()
        slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self.widget._onModuleAboutToBeUnloaded)
        for child in self.panel.children():
            child.setParent(None)
        self.panel.setLayout(widgets.QVBoxLayout())
        self.widget = getattr(self.python_module, self.name + "Widget")(self.panel)
        self.widget.setup()
        return self.widget

    def unload(self) -> None:
        """Application exit (:meth:`Session.quit`): every module is unloaded."""
        self.session.quit()


class Session:
    """Installs the doubles for one test (see the module doc); ``monkeypatch`` undoes it all."""

    def __init__(self, scene: Any, monkeypatch: Any, version: tuple[int, int] = (5, 12), main_window: bool = False) -> None:
        self.scene = scene
        self.monkeypatch = monkeypatch
        self.dialogs: list[Dialog] = []
        self.answers: dict[str, list] = {"message": [], "save_file": []}
        self.pip_failures: list[str] = []
        self.harnesses: list[ModuleHarness] = []
        self.installed: list[str] = []
        REFUSED_CONNECTIONS.clear()
        widgets.QTimer._pending = []
        QSettings.store = {}
        self.app = Application(version)
        if main_window:
            self.app.main_window = MainWindow()
        self._install_qt()
        self._install_slicer()

    # set-up -------------------------------------------------------------------------------------------
    def _install_qt(self) -> None:
        qt = types.ModuleType("qt")
        for name, cls in {**widgets.WIDGET_CLASSES, **widgets.LAYOUT_CLASSES}.items():
            if not name.startswith(("ctk", "qMRML")):
                setattr(qt, name, cls)
        qt.QObject, qt.QTimer, qt.QFile, qt.QUiLoader = QObjectDouble, widgets.QTimer, QFile, QUiLoader
        qt.QMessageBox, qt.Qt, qt.QSettings = QMessageBox, Qt, QSettings
        qt.QFileDialog = self._file_dialog()
        qt.QApplication = types.SimpleNamespace(
            overrideCursor=lambda: None, setOverrideCursor=self.app.setOverrideCursor, restoreOverrideCursor=self.app.restoreOverrideCursor
        )
        qt.QIcon = str
        ctk = types.ModuleType("ctk")
        for name, cls in widgets.WIDGET_CLASSES.items():
            if name.startswith("ctk"):
                setattr(ctk, name, cls)
        ctk.ctkMessageBox = self._message_box()
        self.monkeypatch.setitem(sys.modules, "qt", qt)
        self.monkeypatch.setitem(sys.modules, "ctk", ctk)

    def _file_dialog(self) -> type:
        session = self

        class QFileDialog:
            @staticmethod
            def getSaveFileName(parent=None, caption="", directory="", filter="") -> str:
                session.dialogs.append(Dialog("save file", caption, directory, filter))
                assert session.answers["save_file"], f"the test did not expect a save dialog: {caption}"
                return session.answers["save_file"].pop(0)

        return QFileDialog

    def _message_box(self) -> type:
        session = self

        class ctkMessageBox:
            """ctkMessageBox as slicer.util.messageBox uses it: texts set, then exec_()."""

            def __init__(self, parent: Any = None) -> None:
                self.__dict__.update(text="", windowTitle="", detailedText="", icon=0, standardButtons=QMessageBox.Ok)

            def deleteLater(self) -> None:
                pass

            def exec_(self) -> int:
                kinds = {QMessageBox.Question: "question", QMessageBox.Warning: "warning", QMessageBox.Critical: "error"}
                session.dialogs.append(Dialog(kinds.get(self.icon, "information"), self.windowTitle.strip(), self.text, self.detailedText))
                return session.answers["message"].pop(0) if session.answers["message"] else QMessageBox.Ok

        return ctkMessageBox

    def _install_slicer(self) -> None:
        mp = self.monkeypatch
        mp.setattr(slicer, "app", self.app, raising=False)
        mp.setattr(slicer, "mrmlScene", self.scene, raising=False)
        terminologies = slicer.vtkSlicerTerminologiesModuleLogic()  # the real logic, from slicer-core
        self.terminologies = terminologies
        mp.setattr(slicer, "modules", types.SimpleNamespace(terminologies=types.SimpleNamespace(logic=lambda: terminologies)), raising=False)
        for name in ("qMRMLWidget", "qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qMRMLTableView"):
            mp.setattr(slicer, name, widgets.WIDGET_CLASSES[name], raising=False)
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        i18n.translate = lambda context, text: text
        mp.setitem(sys.modules, "slicer.i18n", i18n)
        mp.setattr(slicer, "i18n", i18n, raising=False)
        if (self.app.majorVersion, self.app.minorVersion) >= (5, 12):
            packaging = types.ModuleType("slicer.packaging")  # new in Slicer 5.12
            packaging.pip_install = self._pip_install
            mp.setitem(sys.modules, "slicer.packaging", packaging)
        else:
            mp.setitem(sys.modules, "slicer.packaging", None)  # import fails, find_spec says None
            mp.setattr(slicer.util, "pip_install", self._pip_install_5_10)
        mp.setitem(sys.modules, "slicer.ScriptedLoadableModule", self._load("slicer.ScriptedLoadableModule", loadable_module()))
        mp.setitem(sys.modules, "SampleData", self._load("SampleData", sample_data_module()))

    def _pip_install(self, requirements: Any, show_progress: bool = True, blocking: bool = True, **kwargs: Any) -> None:
        """``slicer.packaging.pip_install`` (Slicer 5.12.3): a failure raises CalledProcessError,
        after Slicer's own "Package installation failed" dialog where it shows its progress
        dialog (``show_progress and blocking``, outside testing mode)."""
        import subprocess

        names = requirements.split() if isinstance(requirements, str) else list(requirements)
        failing = [n for n in names if any(n.startswith(f) for f in self.pip_failures)]
        if failing:
            if show_progress and blocking and not self.app.testingEnabled():
                slicer.util.errorDisplay("Package installation failed.", windowTitle="Python packages", detailedText="network unreachable")
            raise subprocess.CalledProcessError(1, "pip install")
        self.installed += names

    def _pip_install_5_10(self, requirements: str) -> None:
        """``slicer.util.pip_install`` of Slicer 5.10: no dialog, CalledProcessError on failure."""
        self._pip_install(requirements, show_progress=False)

    def _load(self, name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        self.monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    # what Slicer does --------------------------------------------------------------------------------
    def import_file(self, name: str, path: Path) -> types.ModuleType:
        """Slicer's scripted-module loader: the module's folder on sys.path, the file executed."""
        folder = str(path.parent)
        if folder not in sys.path:
            self.monkeypatch.syspath_prepend(folder)
        return self._load(name, path)

    def load_module(self, name: str, path: Path) -> ModuleHarness:
        harness = ModuleHarness(self, name, path)
        self.harnesses.append(harness)
        return harness

    def quit(self) -> None:
        """File > Exit: ``aboutToQuit()``, whose first slot (the application's own) unloads every
        module, then the slots modules connected."""
        if not any(h.unloaded for h in self.harnesses):
            self.app.emit("aboutToQuit()")
        for harness in self.harnesses:
            harness.unloaded = True

    def close(self) -> None:
        """End of the test: Slicer quits (modules' cleanup), node selectors off the scene, so
        that no scene event reaches a panel that is gone."""
        self.quit()
        for combo in list(widgets.qMRMLNodeComboBox._instances):
            combo.setMRMLScene(None)

    def startup_completed(self) -> None:
        self.app.emit("startupCompleted()")

    def close_scene(self) -> None:
        """File > Close Scene."""
        self.scene.Clear(0)

    def message_texts(self, kind: str | None = None) -> list[str]:
        return [d.text for d in self.dialogs if kind is None or d.kind == kind]


def loadable_module() -> Path:
    source = os.environ.get("SLICER_SOURCE_DIR")
    return Path(source) / "Base/Python/slicer/ScriptedLoadableModule.py" if source else HERE / "loadable.py"


def sample_data_module() -> Path:
    source = os.environ.get("SLICER_SOURCE_DIR")
    return Path(source) / "Modules/Scripted/SampleData/SampleData.py" if source else HERE / "sample_data.py"
