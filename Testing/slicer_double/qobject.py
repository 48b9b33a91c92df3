"""A QObject as PythonQt shows it to Python, for classes described by the real headers.

What PythonQt does (commontk/PythonQt and MeVisLab/pythonqt v4.1.0, ``PythonQtInstanceWrapper.cpp``
``setattro``/``getattro``, ``PythonQtClassInfo.cpp`` ``lookForPropertyAndCache``,
``PythonQtStdDecorators.cpp`` ``connect``), and so this double:

* reading a Q_PROPERTY (own or inherited) gives its value; ``name`` reads ``objectName``;
  QTimer's ``singleShot`` is *not* a property (PythonQt ignores it: use ``setSingleShot``);
* assigning a writable Q_PROPERTY writes it (with the setter's side effects: signals, clamping);
  a read-only one raises ``Property 'x' of <cls> object is not writable``; a slot, invokable or
  method name raises ``Slot 'x' can not be overwritten on <cls> object``; any other name raises
  ``'x' does not exist on <cls> and creating new attributes on C++ objects is not allowed``;
* ``connect(signature, callable)`` with a signature the class does not declare prints
  ``PythonQt: QObject::connect() signal '...' does not exist on <cls>`` and returns False (no
  exception): the double also records it in :data:`REFUSED_CONNECTIONS`, which tests check;
* a slot receives at most as many signal arguments as it accepts.

Calling a real member that this double gives no behaviour raises ``NotImplementedError`` (the
test then needs the behaviour added here, from Qt's documentation, never from the module code).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .api import ClassAPI, class_api, normalise

REFUSED_CONNECTIONS: list[str] = []  # "Class::signature" that code tried to connect to and PythonQt would refuse
PYTHONQT_DECORATORS = frozenset({"className", "connect", "disconnect", "delete", "help"})


class QObjectDouble:
    """Base of every widget double; ``qt_class`` names the C++ class whose API it has."""

    qt_class = "QObject"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A double may only give behaviour to members the real class has."""
        super().__init_subclass__(**kwargs)
        api = class_api(cls.qt_class)
        for name, value in vars(cls).items():
            if callable(value) or isinstance(value, staticmethod):
                if not name.startswith("_") and name not in api.methods and name not in PYTHONQT_DECORATORS:
                    raise TypeError(f"the double of {cls.qt_class} defines {name}(), which the real class does not have")
                if name.startswith("_get_") or name.startswith("_set_"):
                    if name[5:] not in api.properties:
                        raise TypeError(f"the double of {cls.qt_class} defines {name}, but {name[5:]} is no property of it")

    def __init__(self, parent: QObjectDouble | None = None) -> None:
        state = {"props": {}, "dynamic": {}, "connections": {}, "blocked": False, "children": [], "parent": None}
        object.__setattr__(self, "_d", state)
        if parent is not None:
            self.setParent(parent)

    # PythonQt's attribute rules -----------------------------------------------------------------------
    @classmethod
    def api(cls) -> ClassAPI:
        return class_api(cls.qt_class)

    @classmethod
    def _is_property(cls, name: str) -> bool:
        return name in cls.api().properties and not (name == "singleShot" and "QTimer" in cls.api().chain)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name in ("qt_class", "api"):
            return object.__getattribute__(self, name)
        cls = type(self)
        if name == "name":
            name = "objectName"
        if cls._is_property(name):
            return self._read(name)
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            if name in cls.api().methods:
                return _unimplemented(cls.qt_class, name)
            raise AttributeError(f"{cls.qt_class} has no attribute named '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if name == "name":
            name = "objectName"
        if cls._is_property(name):
            spec = cls.api().properties[name]
            if not spec.get("write"):
                raise AttributeError(f"Property '{name}' of {cls.qt_class} object is not writable")
            self._write(name, _convert(cls.qt_class, name, spec["type"], value))
            return
        if name in cls.api().methods or name in cls.api().signals or name in PYTHONQT_DECORATORS:
            raise AttributeError(f"Slot '{name}' can not be overwritten on {cls.qt_class} object")
        raise AttributeError(f"'{name}' does not exist on {cls.qt_class} and creating new attributes on C++ objects is not allowed")

    def _read(self, name: str) -> Any:
        getter = getattr(type(self), f"_get_{name}", None)
        if getter is not None:
            return getter(self)
        return self._d["props"].get(name, _default(self.api().properties[name]["type"]))

    def _write(self, name: str, value: Any) -> None:
        setter = getattr(type(self), f"_set_{name}", None)
        if setter is not None:
            setter(self, value)
        else:
            self._d["props"][name] = value

    def _store(self, name: str, value: Any) -> bool:
        """Keep a property value; True when it changed."""
        changed = self._d["props"].get(name, _default(self.api().properties[name]["type"])) != value
        self._d["props"][name] = value
        return changed

    # signals -------------------------------------------------------------------------------------------
    def connect(self, signal: str, slot: Callable) -> bool:
        signature = normalise(signal)
        if not self.api().has_signal(signature):
            REFUSED_CONNECTIONS.append(f"{self.qt_class}::{signature}")
            print(f"PythonQt: QObject::connect() signal '{signal}' does not exist on {self.qt_class}")
            return False
        self._d["connections"].setdefault(signature, []).append(slot)
        return True

    def disconnect(self, signal: str, slot: Callable | None = None) -> bool:
        slots = self._d["connections"].get(normalise(signal), [])
        if slot is None:
            slots.clear()
            return True
        if slot in slots:
            slots.remove(slot)
            return True
        return False

    def blockSignals(self, block: bool) -> bool:
        previous = self._d["blocked"]
        self._d["blocked"] = bool(block)
        return previous

    def signalsBlocked(self) -> bool:
        return self._d["blocked"]

    def _emit(self, signal: str, *args: Any) -> None:
        signature = normalise(signal)
        assert self.api().has_signal(signature), f"the double emits {signature}, which {self.qt_class} does not declare"
        if self._d["blocked"]:
            return
        for slot in list(self._d["connections"].get(signature, [])):
            slot(*args[: _arity(slot, len(args))])

    def _receivers(self, signal: str) -> int:
        """How many slots are connected (a test's view; Qt's receivers() is protected)."""
        return len(self._d["connections"].get(normalise(signal), []))

    # object tree -----------------------------------------------------------------------------------------
    def setParent(self, parent: QObjectDouble | None) -> None:
        old = self._d["parent"]
        if old is not None:
            old._d["children"].remove(self)
        self._d["parent"] = parent
        if parent is not None:
            parent._d["children"].append(self)

    def parent(self) -> QObjectDouble | None:
        return self._d["parent"]

    def children(self) -> list[QObjectDouble]:
        return list(self._d["children"])

    def className(self) -> str:
        return self.qt_class

    def inherits(self, name: str) -> bool:
        return name in self.api().chain

    def property(self, name: str) -> Any:
        return self._read(name) if type(self)._is_property(name) else self._d["dynamic"].get(name)

    def setProperty(self, name: str, value: Any) -> bool:
        if type(self)._is_property(name):
            setattr(self, name, value)
            return True
        self._d["dynamic"][name] = value
        return False

    def deleteLater(self) -> None:
        self.setParent(None)

    def setObjectName(self, name: str) -> None:
        self.objectName = name

    def _set_objectName(self, value: str) -> None:
        if self._store("objectName", value):
            self._emit("objectNameChanged(QString)", value)


def _unimplemented(cls: str, name: str) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{cls}.{name} exists in the real API but the widget double gives it no behaviour yet")

    return call


def _arity(slot: Callable, available: int) -> int:
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return available
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(available, len(positional))


_DEFAULTS = {"bool": False, "int": 0, "double": 0.0, "float": 0.0, "QString": "", "QStringList": []}


def _default(kind: str) -> Any:
    value = _DEFAULTS.get(kind)
    return list(value) if isinstance(value, list) else value


def _convert(cls: str, name: str, kind: str, value: Any) -> Any:
    """PythonQt's conversion of a Python value to the property's C++ type (refusing what it refuses)."""

    def refuse() -> None:
        raise AttributeError(f"Property '{name}' of type '{kind}' does not accept an object of type {type(value).__name__} ({value!r})")

    if kind == "bool":
        if not isinstance(value, (bool, int)):
            refuse()
        return bool(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            refuse()
        return int(value)
    if kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse()
        return float(value)
    if kind == "QString":
        if not isinstance(value, str):
            refuse()
        return value
    if kind == "QStringList":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            refuse()
        return list(value)
    return value
