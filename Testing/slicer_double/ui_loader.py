"""``qt.QUiLoader`` and ``qt.QFile`` for ``slicer.util.loadUI``: a Designer file becomes doubles.

Every widget, layout, property and connection in the ``.ui`` file is checked against the real
API (:mod:`.api`) while it is built: an unknown class, a property the class does not have, or a
connection between a signal and a slot that do not exist fails the load, as QUiLoader would
refuse (or silently drop) them in Slicer.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .api import class_api
from .widgets import LAYOUT_CLASSES, WIDGET_CLASSES, QWidget


class UiError(AssertionError):
    """The .ui file uses something the real classes do not have."""


class QFile:
    ReadOnly = 1

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def open(self, mode: int) -> bool:
        return self.exists()


class QUiLoader:
    def load(self, qfile: QFile) -> QWidget:
        root = ET.parse(qfile.path).getroot()
        widgets: dict[str, Any] = {}
        top = _widget(root.find("widget"), None, widgets)
        for connection in root.iter("connection"):
            _connect(connection, widgets)
        return top


def _value(element: ET.Element) -> Any:
    tag, text = element.tag, element.text or ""
    if tag == "string":
        return text
    if tag == "bool":
        return text == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in element.findall("string")]
    return text  # enum / set / size: kept as written (no behaviour depends on them here)


def _widget(element: ET.Element, parent: Any, widgets: dict[str, Any]) -> Any:
    kind, name = element.get("class"), element.get("name")
    if kind not in WIDGET_CLASSES:
        raise UiError(f"{name}: class {kind} has no double (and no header data): add it from the real headers")
    widget = WIDGET_CLASSES[kind](parent)
    widget.objectName = name
    widgets[name] = widget
    api = class_api(kind)
    for prop in element.findall("property"):
        key, value = prop.get("name"), _value(next(iter(prop)))
        if prop.get("stdset") == "0":
            widget.setProperty(key, value)
        elif key not in api.properties:
            raise UiError(f"{name}: {kind} has no property {key!r}")
        elif isinstance(value, str) and api.properties[key]["type"] not in ("QString",):
            widget._d["props"][key] = value  # an enum or flag set, as Designer wrote it
        else:
            setattr(widget, key, value)
    layout = element.find("layout")
    if layout is not None:
        widget.setLayout(_layout(layout, widget, widgets))
    return widget


def _layout(element: ET.Element, owner: Any, widgets: dict[str, Any]) -> Any:
    kind = element.get("class")
    if kind not in LAYOUT_CLASSES:
        raise UiError(f"layout class {kind} has no double")
    layout = LAYOUT_CLASSES[kind]()
    layout.objectName = element.get("name") or ""
    for item in element.findall("item"):
        child = item.find("widget")
        if child is not None:
            _widget(child, owner, widgets)
        nested = item.find("layout")
        if nested is not None:
            _layout(nested, owner, widgets).setParent(layout)
    return layout


def _connect(element: ET.Element, widgets: dict[str, Any]) -> None:
    sender, receiver = widgets[element.findtext("sender")], widgets[element.findtext("receiver")]
    signal, slot = element.findtext("signal"), element.findtext("slot")
    if not sender.api().has_signal(signal):
        raise UiError(f"{sender.objectName}: {sender.qt_class} has no signal {signal}")
    if not receiver.api().has_slot(slot):
        raise UiError(f"{receiver.objectName}: {receiver.qt_class} has no slot {slot}")
    sender.connect(signal, getattr(receiver, slot.split("(", 1)[0]))
