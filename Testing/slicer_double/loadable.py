"""``slicer.ScriptedLoadableModule`` as Slicer 5.12.3 defines it, for tests outside Slicer.

Slicer's own file (``Base/Python/slicer/ScriptedLoadableModule.py`` at v5.12.3,
9034c71a8fce68ab312458b3d7d16f610562263d, identical on main) is not on PyPI and may not be
copied here, so this module restates its contract, each part with the lines it follows. Point
``SLICER_SOURCE_DIR`` at a Slicer source tree and the tests load Slicer's real file instead
(:func:`slicer_double.session.loadable_module`); README "Use in 3D Slicer" says how this stand-in
was checked against it. What matters to the modules under test:

* every ``__init__`` calls ``super().__init__()`` with **no arguments** (cooperative multiple
  inheritance since Slicer commit 917c02e00b, 2022; lines 19, 93, 298): a logic class that puts
  another base after ``ScriptedLoadableModuleLogic`` gets that base's ``__init__()`` called
  without arguments;
* ``ScriptedLoadableModule.__init__(parent)`` sets the module's default texts on ``parent``,
  its icon from ``Resources/Icons/<Module>.png`` and registers ``slicer.selfTests[name]``
  (lines 18-51); ``resourcePath`` is ``<module dir>/Resources/<file>`` (53-56);
* ``ScriptedLoadableModuleWidget.__init__(parent)`` sets ``moduleName`` (class name without
  ``Widget``), ``developerMode`` (setting ``Developer/DeveloperMode``), ``parent``, ``layout`` =
  ``parent.layout()``, calls ``setup()`` itself only when no parent is given, and connects
  ``moduleAboutToBeUnloaded(QString)`` of the module manager to call ``cleanup()`` for this
  module (89-140); ``setup()`` adds the developer section only in developer mode (232-234);
  there is no ``enter``/``exit`` in the base: Slicer calls them only when the subclass has them;
* ``ScriptedLoadableModuleLogic.__init__(parent=None)`` sets ``moduleName`` (class name without
  ``Logic``) and ``isSingletonParameterNode`` (296-308); ``getParameterNode`` restores the
  ``ModuleName`` attribute that a scene close removes (310-330);
* ``ScriptedLoadableModuleTest`` is a ``unittest.TestCase`` whose ``runTest`` runs every method
  with "test" in its name between ``setUp``/``tearDown`` (367-508); ctest instead runs the
  ``test_*`` methods through ``unittest`` and never calls ``runTest``.
"""

from __future__ import annotations

import logging
import os
import unittest

import qt
import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"]


class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = "This module was created from a template and the help section has not yet been updated."
        parent.acknowledgementText = ""
        module_dir = os.path.dirname(self.parent.path)
        for extension in (".svg", ".png"):
            icon = os.path.join(module_dir, "Resources/Icons", self.moduleName + extension)
            if os.path.isfile(icon):
                parent.icon = icon
                break
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        import importlib

        module = importlib.import_module(self.__module__)
        test_case = getattr(module, self.moduleName + "Test")()
        test_case.messageDelay = msec
        test_case.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool)
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def cleanup(self):
        pass

    def _onModuleAboutToBeUnloaded(self, moduleName):
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def setup(self):
        if self.developerMode:
            logging.info("developer mode: Slicer adds its Reload / Test section here")

    def onReload(self):
        slicer.util.reloadScriptedModule(self.moduleName)

    def onTest(self, **kwargs):
        """The developer section's *Test* (and the test half of *Reload and Test*): the module's
        ``runTest`` called directly inside ``tryWithErrorDisplay``, not through unittest."""
        with slicer.util.tryWithErrorDisplay("Test failed."):
            test = slicer.selfTests[self.moduleName]
            test(msec=0, **kwargs)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        self.moduleTestNames = []
        super().__init__(*args, **kwargs)
        self.moduleTestNames = [name for name in dir(self) if "test" in name and callable(getattr(self, name))]

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)

    def runTest(self):
        self.setUpClass()
        for name in self.moduleTestNames:
            self.setUp()
            getattr(self, name)()
            self.tearDown()
        self.tearDownClass()
