"""The real API of each widget class, from ``Testing/slicer_api/widget_api.json``.

That file was extracted from the Qt 5.15, CTK and Slicer headers at pinned commits (its README
says how); nothing here is taken from the module code under test. A class's API is its own
entry plus its bases', as C++ inheritance and PythonQt's member lookup have it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

API_FILE = Path(__file__).resolve().parent.parent / "slicer_api" / "widget_api.json"


@dataclass(frozen=True)
class ClassAPI:
    """Everything PythonQt exposes for one class, inheritance included."""

    name: str
    chain: tuple[str, ...]  # the class and its ancestors, nearest first
    properties: dict[str, dict] = field(default_factory=dict)  # name -> {type, read, write, notify}
    signals: frozenset[str] = frozenset()  # normalised signatures
    slots: frozenset[str] = frozenset()  # normalised signatures of slots and Q_INVOKABLEs
    methods: frozenset[str] = frozenset()  # names of every callable member (slots, invokables, public methods)
    enums: dict[str, list[str]] = field(default_factory=dict)

    def has_signal(self, signature: str) -> bool:
        return normalise(signature) in self.signals

    def has_slot(self, signature: str) -> bool:
        return normalise(signature) in self.slots


@cache
def _data() -> dict:
    return json.loads(API_FILE.read_text(encoding="utf-8"))


def known_classes() -> list[str]:
    return list(_data()["classes"])


@cache
def class_api(name: str) -> ClassAPI:
    """The API of ``name`` with everything it inherits (KeyError for a class the data lacks)."""
    classes = _data()["classes"]
    chain, current = [], name
    while current:
        entry = classes[current]
        chain.append(current)
        current = entry.get("base")
    properties: dict[str, dict] = {}
    signals, slots, methods = set(), set(), set()
    enums: dict[str, list[str]] = {}
    for cls in reversed(chain):  # bases first, so a subclass's declaration wins
        entry = classes[cls]
        for other in entry.get("other_bases") or []:
            methods.update(classes.get(other, {}).get("methods", []))
        properties.update(entry.get("properties", {}))
        signals.update(entry.get("signals", []))
        slots.update(entry.get("slots", []))
        slots.update(entry.get("invokables", []))
        methods.update(entry.get("methods", []))
        for enum, spec in (entry.get("enums") or {}).items():
            enums[enum] = list(spec.get("values", [])) if isinstance(spec, dict) else list(spec)
    methods.update(_name(s) for s in slots | signals)
    return ClassAPI(name, tuple(chain), properties, frozenset(signals), frozenset(slots), frozenset(methods), enums)


def _name(signature: str) -> str:
    return signature.split("(", 1)[0]


def normalise(signature: str) -> str:
    """Qt's normalised signature: no spaces, ``const T&`` -> ``T`` (enough for the signatures used here)."""
    text = re.sub(r"\bconst\s+", "", signature)
    text = re.sub(r"\s*&", "", text)
    return re.sub(r"\s+", "", text)
