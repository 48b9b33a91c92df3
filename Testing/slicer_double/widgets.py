"""Behaviour of the widget classes the modules use, as Qt, CTK and Slicer document it.

Names (which properties, signals and slots exist) come from the header data (:mod:`.api`);
behaviour (which setter emits which signal, what is clamped or refused) from the classes'
documentation and sources, cited where it is not obvious:

* QAbstractButton::click() does nothing on a disabled button; a checkable button toggles and
  emits toggled(bool) before clicked(bool);
* QComboBox: adding the first item makes it current (currentIndexChanged); clear() goes to -1;
  an index out of range becomes -1;
* QProgressBar::setValue ignores values outside [minimum, maximum];
* QSpinBox clamps to its range;
* ctkSliderWidget clamps its value to [minimum, maximum] and rounds it to ``decimals``; it emits
  valueChanged(double) only when the value changes; setSingleStep refuses a step outside
  (0, maximum - minimum] (``ctkSliderWidget.cpp:417-431``);
* ctkPathLineEdit emits currentPathChanged(QString) only for a changed, non-empty path that its
  name filters accept; an empty path emits only validInputChanged(false) (``ctkPathLineEdit.cpp``
  ``setCurrentPath`` and ``updateHasValidInput``);
* qMRMLNodeComboBox selects a node automatically only when "None" is not offered, and falls
  back when its current node leaves the scene; setCurrentNode emits currentNodeChanged(vtkMRMLNode*),
  currentNodeChanged(bool) and currentNodeIDChanged(QString) when the node changes.
"""

from __future__ import annotations

import fnmatch
import re
import sys
import weakref
from typing import Any

from .qobject import QObjectDouble


class QWidget(QObjectDouble):
    qt_class = "QWidget"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["props"].update(enabled=True, visible=False)
        self._d["layout"] = None

    def show(self) -> None:
        self._d["props"]["visible"] = True

    def hide(self) -> None:
        self._d["props"]["visible"] = False

    def setVisible(self, visible: bool) -> None:
        self._d["props"]["visible"] = bool(visible)

    def setHidden(self, hidden: bool) -> None:
        self.setVisible(not hidden)

    def isVisible(self) -> bool:
        return self.visible

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def isEnabled(self) -> bool:
        return self.enabled

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def layout(self) -> QObjectDouble | None:
        return self._d["layout"]

    def setLayout(self, layout: QObjectDouble) -> None:
        self._d["layout"] = layout
        layout.setParent(self)


class QLayout(QObjectDouble):
    qt_class = "QLayout"

    def addWidget(self, widget: QWidget, *args: Any) -> None:
        owner = self.parent()
        widget.setParent(owner if owner is not None else self)

    def count(self) -> int:
        return len(self.children())


class QVBoxLayout(QLayout):
    qt_class = "QVBoxLayout"

    def addStretch(self, stretch: int = 0) -> None:
        pass


class QFormLayout(QLayout):
    qt_class = "QFormLayout"

    def addRow(self, *widgets: Any) -> None:
        for widget in widgets:
            if isinstance(widget, QWidget):
                self.addWidget(widget)


class QLabel(QWidget):
    qt_class = "QLabel"

    def setText(self, text: str) -> None:
        self.text = text

    def clear(self) -> None:
        self.text = ""


class QAbstractButton(QWidget):
    qt_class = "QAbstractButton"

    def click(self) -> None:
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self._emit("clicked(bool)", self.checked)
        self._emit("clicked()")

    def setChecked(self, checked: bool) -> None:
        self.checked = checked

    def toggle(self) -> None:
        self.checked = not self.checked

    def setText(self, text: str) -> None:
        self.text = text

    def _set_checked(self, value: bool) -> None:
        if not self.checkable:
            return
        if self._store("checked", value):
            self._emit("toggled(bool)", value)
            self._on_checked(value)

    def _on_checked(self, value: bool) -> None:
        pass


class QPushButton(QAbstractButton):
    qt_class = "QPushButton"


class QCheckBox(QAbstractButton):
    qt_class = "QCheckBox"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["props"]["checkable"] = True

    def _on_checked(self, value: bool) -> None:
        self._emit("stateChanged(int)", 2 if value else 0)

    def isChecked(self) -> bool:
        return self.checked


class ctkCollapsibleButton(QAbstractButton):
    qt_class = "ctkCollapsibleButton"

    def _set_collapsed(self, value: bool) -> None:
        if self._store("collapsed", value):
            self._emit("contentsCollapsed(bool)", value)

    def setCollapsed(self, value: bool) -> None:
        self.collapsed = value


class QComboBox(QWidget):
    qt_class = "QComboBox"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["items"] = []  # [text, data]
        self._d["props"]["currentIndex"] = -1

    def addItem(self, text: str, userData: Any = None) -> None:
        self._d["items"].append([str(text), userData])
        if self._d["props"]["currentIndex"] == -1:
            self._change_index(0)

    def addItems(self, texts: list[str]) -> None:
        for text in texts:
            self.addItem(text)

    def clear(self) -> None:
        self._d["items"].clear()
        self._change_index(-1)

    def findText(self, text: str) -> int:
        return next((i for i, (t, _) in enumerate(self._d["items"]) if t == text), -1)

    def findData(self, data: Any) -> int:
        return next((i for i, (_, d) in enumerate(self._d["items"]) if d == data), -1)

    def itemText(self, index: int) -> str:
        return self._d["items"][index][0] if 0 <= index < len(self._d["items"]) else ""

    def itemData(self, index: int) -> Any:
        return self._d["items"][index][1] if 0 <= index < len(self._d["items"]) else None

    def setCurrentIndex(self, index: int) -> None:
        self.currentIndex = index

    def setCurrentText(self, text: str) -> None:
        self.currentText = text

    def _get_count(self) -> int:
        return len(self._d["items"])

    def _get_currentText(self) -> str:
        return self.itemText(self._d["props"]["currentIndex"])

    def _get_currentData(self) -> Any:
        return self.itemData(self._d["props"]["currentIndex"])

    def _set_currentIndex(self, index: int) -> None:
        self._change_index(index if 0 <= index < len(self._d["items"]) else -1)

    def _set_currentText(self, text: str) -> None:
        index = self.findText(text)
        if index >= 0:
            self._change_index(index)

    def _change_index(self, index: int) -> None:
        if self._d["props"]["currentIndex"] == index:
            return
        self._d["props"]["currentIndex"] = index
        self._emit("currentIndexChanged(int)", index)
        self._emit("currentTextChanged(QString)", self.itemText(index))


class QProgressBar(QWidget):
    qt_class = "QProgressBar"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["props"].update(minimum=0, maximum=100, value=-1)

    def setValue(self, value: int) -> None:
        self.value = value

    def _set_value(self, value: int) -> None:
        props = self._d["props"]
        if not props["minimum"] <= value <= props["maximum"]:
            return
        if self._store("value", value):
            self._emit("valueChanged(int)", value)


class QSpinBox(QWidget):
    qt_class = "QSpinBox"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["props"].update(minimum=0, maximum=99, value=0, singleStep=1)

    def _set_value(self, value: int) -> None:
        props = self._d["props"]
        value = min(max(value, props["minimum"]), props["maximum"])
        if self._store("value", value):
            self._emit("valueChanged(int)", value)

    def _set_minimum(self, value: int) -> None:
        self._d["props"]["minimum"] = value
        self._d["props"]["maximum"] = max(value, self._d["props"]["maximum"])
        self._set_value(self._d["props"]["value"])

    def _set_maximum(self, value: int) -> None:
        self._d["props"]["maximum"] = value
        self._d["props"]["minimum"] = min(value, self._d["props"]["minimum"])
        self._set_value(self._d["props"]["value"])

    def setValue(self, value: int) -> None:
        self.value = value


class QPlainTextEdit(QWidget):
    qt_class = "QPlainTextEdit"

    def appendPlainText(self, text: str) -> None:
        current = self._d["props"].get("plainText", "")
        self._set_plainText(f"{current}\n{text}" if current else text)

    def clear(self) -> None:
        self._set_plainText("")

    def setPlainText(self, text: str) -> None:
        self._set_plainText(text)

    def toPlainText(self) -> str:
        return self._d["props"].get("plainText", "")

    def _set_plainText(self, text: str) -> None:
        if self._store("plainText", text):
            self._emit("textChanged()")


class ctkSliderWidget(QWidget):
    qt_class = "ctkSliderWidget"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["props"].update(minimum=0.0, maximum=99.0, value=0.0, decimals=2, singleStep=1.0)
        self._d["refused_steps"] = []  # what Slicer would have refused with a qWarning

    def _clamped(self, value: float) -> float:
        props = self._d["props"]
        return round(min(max(float(value), props["minimum"]), props["maximum"]), props["decimals"])

    def _set_value(self, value: float) -> None:
        value = self._clamped(value)
        if self._store("value", value):
            self._emit("valueChanged(double)", value)

    def _set_minimum(self, value: float) -> None:
        self._d["props"]["minimum"] = float(value)
        self._d["props"]["maximum"] = max(float(value), self._d["props"]["maximum"])
        self._set_value(self._d["props"]["value"])

    def _set_maximum(self, value: float) -> None:
        self._d["props"]["maximum"] = float(value)
        self._d["props"]["minimum"] = min(float(value), self._d["props"]["minimum"])
        self._set_value(self._d["props"]["value"])

    def _set_decimals(self, value: int) -> None:
        self._d["props"]["decimals"] = int(value)
        self._set_value(self._d["props"]["value"])

    def _set_singleStep(self, value: float) -> None:
        """``ctkSliderWidget::setSingleStep`` refuses (a qWarning, the step unchanged) what
        ``ctkDoubleSlider::isValidStep`` refuses: below max(maximum / DBL_MAX, DBL_EPSILON) or
        above min(maximum - minimum, INT_MAX); any step is valid on an empty range."""
        props = self._d["props"]
        low, high = props["minimum"], props["maximum"]
        if low != high:
            smallest = max(high / sys.float_info.max, sys.float_info.epsilon)
            if not smallest <= float(value) <= min(high - low, float(2**31 - 1)):
                self._d["refused_steps"].append(float(value))
                return
        props["singleStep"] = float(value)

    def setValue(self, value: float) -> None:
        self.value = value

    def setRange(self, minimum: float, maximum: float) -> None:
        self._d["props"]["minimum"], self._d["props"]["maximum"] = float(minimum), float(max(minimum, maximum))
        self._set_value(self._d["props"]["value"])


class ctkPathLineEdit(QWidget):
    qt_class = "ctkPathLineEdit"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["props"].update(currentPath="", nameFilters=[])
        self._d["valid"] = False

    def setCurrentPath(self, path: str) -> None:
        self.currentPath = path

    def _accepts(self, path: str) -> bool:
        if not path:
            return False
        patterns = [p for f in self._d["props"]["nameFilters"] for p in re.findall(r"\*[^\s)]*", f)]
        return not patterns or any(fnmatch.fnmatch(path, p) for p in patterns)

    def _set_currentPath(self, path: str) -> None:
        if not self._store("currentPath", path):
            return
        valid = self._accepts(path)
        if valid != self._d["valid"]:
            self._d["valid"] = valid
            self._emit("validInputChanged(bool)", valid)
        if valid:
            self._emit("currentPathChanged(QString)", path)


class QAbstractItemView(QWidget):
    qt_class = "QAbstractItemView"


class qMRMLTableView(QAbstractItemView):
    qt_class = "qMRMLTableView"

    def setMRMLScene(self, scene: Any) -> None:
        self._d["scene"] = scene

    def setMRMLTableNode(self, node: Any) -> None:
        """A typed slot (``vtkMRMLTableNode*``, or a ``vtkMRMLNode*`` that must be one): PythonQt
        refuses anything else with a TypeError."""
        if node is not None and not (hasattr(node, "IsA") and node.IsA("vtkMRMLTableNode")):
            raise TypeError(f"qMRMLTableView.setMRMLTableNode(vtkMRMLTableNode*): called with {type(node).__name__}")
        self._d["table"] = node

    def mrmlTableNode(self) -> Any:
        return self._d.get("table")


class qMRMLWidget(QWidget):
    qt_class = "qMRMLWidget"

    def setMRMLScene(self, scene: Any) -> None:
        if self._d.get("scene") is not scene:
            self._d["scene"] = scene
            self._emit("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self) -> Any:
        return self._d.get("scene")


class qMRMLNodeComboBox(QWidget):
    qt_class = "qMRMLNodeComboBox"
    _instances: weakref.WeakSet = weakref.WeakSet()  # so a session can let go of its scene at the end

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        qMRMLNodeComboBox._instances.add(self)
        self._d["props"].update(noneEnabled=False, nodeTypes=[], showChildNodeTypes=True, addEnabled=True, removeEnabled=True)
        self._d.update(scene=None, current=None, observers=[])

    def setMRMLScene(self, scene: Any) -> None:
        if self._d["scene"] is scene:
            return
        old = self._d["scene"]
        if old is not None:
            for tag in self._d["observers"]:
                old.RemoveObserver(tag)
        self._d.update(scene=scene, observers=[])
        if scene is not None:
            self._d["observers"] = [
                scene.AddObserver(scene.NodeAddedEvent, self._on_scene_changed),
                scene.AddObserver(scene.NodeRemovedEvent, self._on_scene_changed),
                scene.AddObserver(scene.EndCloseEvent, self._on_scene_changed),
            ]
        self._select(self._current_or_default())

    def mrmlScene(self) -> Any:
        return self._d["scene"]

    def _listed(self) -> list[Any]:
        scene = self._d["scene"]
        if scene is None:
            return []
        found = []
        for kind in self._d["props"]["nodeTypes"]:
            collection = scene.GetNodesByClass(kind)
            for index in range(collection.GetNumberOfItems()):
                node = collection.GetItemAsObject(index)
                exact = node.GetClassName() == kind
                if (exact or self._d["props"]["showChildNodeTypes"]) and not node.GetHideFromEditors() and node not in found:
                    found.append(node)
        return found

    def nodeCount(self) -> int:
        return len(self._listed())

    def currentNode(self) -> Any:
        return self._d["current"]

    def currentNodeId(self) -> str:
        return self._get_currentNodeID()

    def _get_currentNodeID(self) -> str:
        node = self._d["current"]
        return node.GetID() if node is not None else ""

    def _set_currentNodeID(self, node_id: str) -> None:
        scene = self._d["scene"]
        self.setCurrentNode(scene.GetNodeByID(node_id) if scene is not None and node_id else None)

    def setCurrentNode(self, node: Any) -> None:
        if isinstance(node, str):
            self._set_currentNodeID(node)
            return
        if node is not None and node not in self._listed():
            node = None  # qMRMLNodeComboBox selects only nodes it lists
        if node is None and not self._d["props"]["noneEnabled"]:
            node = self._current_or_default()
        self._select(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self._set_currentNodeID(node_id)

    def _current_or_default(self) -> Any:
        listed = self._listed()
        current = self._d["current"]
        if current in listed:
            return current
        return None if self._d["props"]["noneEnabled"] or not listed else listed[0]

    def _select(self, node: Any) -> None:
        if node is self._d["current"]:
            return
        self._d["current"] = node
        self._emit("currentNodeChanged(vtkMRMLNode*)", node)
        self._emit("currentNodeChanged(bool)", node is not None)
        self._emit("currentNodeIDChanged(QString)", node.GetID() if node is not None else "")

    def _on_scene_changed(self, caller: Any = None, event: Any = None) -> None:
        self._select(self._current_or_default())


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    qt_class = "qMRMLCheckableNodeComboBox"

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d["checked"] = []

    def checkedNodes(self) -> list[Any]:
        listed = self._listed()
        return [node for node in self._d["checked"] if node in listed]

    def check(self, node: Any) -> None:
        if node in self._listed() and node not in self._d["checked"]:
            self._d["checked"].append(node)
            self._emit("checkedNodesChanged()")

    def uncheck(self, node: Any) -> None:
        if node in self._d["checked"]:
            self._d["checked"].remove(node)
            self._emit("checkedNodesChanged()")


class QTimer(QObjectDouble):
    """Never fires by itself: the test advances time with :meth:`_fire` (what the event loop does)."""

    qt_class = "QTimer"
    _pending: list = []  # callables queued by QTimer.singleShot(msec, callable)

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        super().__init__(parent)
        self._d.update(active=False, single=False)
        self._d["props"]["interval"] = 0

    def setSingleShot(self, single: bool) -> None:
        self._d["single"] = bool(single)

    def isSingleShot(self) -> bool:
        return self._d["single"]

    def setInterval(self, msec: int) -> None:
        self.interval = msec

    def start(self, msec: int | None = None) -> None:
        if msec is not None:
            self.interval = msec
        self._d["active"] = True

    def stop(self) -> None:
        self._d["active"] = False

    def isActive(self) -> bool:
        return self._d["active"]

    def _get_active(self) -> bool:
        return self._d["active"]

    @staticmethod
    def singleShot(msec: int, function: Any) -> None:
        QTimer._pending.append(function)

    def _fire(self) -> bool:
        """One timeout, as the event loop would deliver it; False if the timer is not running."""
        if not self._d["active"]:
            return False
        if self._d["single"]:
            self._d["active"] = False
        self._emit("timeout()")
        return True


WIDGET_CLASSES = {
    cls.qt_class: cls
    for cls in (
        QWidget,
        QLabel,
        QPushButton,
        QCheckBox,
        QComboBox,
        QProgressBar,
        QSpinBox,
        QPlainTextEdit,
        ctkCollapsibleButton,
        ctkSliderWidget,
        ctkPathLineEdit,
        qMRMLTableView,
        qMRMLWidget,
        qMRMLNodeComboBox,
        qMRMLCheckableNodeComboBox,
    )
}
LAYOUT_CLASSES = {cls.qt_class: cls for cls in (QVBoxLayout, QFormLayout)}
