"""The engine's layout rule (CONTRIBUTING.md): one subpackage per pipeline stage, imports only
downward, no import cycle, small modules, and documentation whose links all resolve.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "ssae"
# Lowest first: a module may import its own stage or the stages before it, never a later one.
STAGES = ("io", "preprocessing", "scoring", "models", "detection", "training", "evaluation", "app")
LONGEST_MODULE = 350  # lines; a longer module says why in its docstring ("Why one module:")


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Every ssae module ``name`` imports, at any depth of the file (function-level too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base == "ssae" or base.startswith("ssae."):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ssae"))
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 2 and parts[1] in STAGES else None


def test_the_engine_is_organised_by_stage_with_a_docstring_per_stage():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(STAGES)
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"], loose
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "may import" in doc.lower(), f"ssae/{stage}/__init__.py must say what the stage owns and what it may import"


def test_no_stage_imports_a_later_stage():
    upward = []
    for name, path in _modules().items():
        own = _stage(name)
        for imported in _imports(name, path):
            other = _stage(imported)
            if own is not None and other is not None and other > own:
                upward.append(f"{name} imports {imported}")
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_modules_are_small_or_say_why_not():
    long = []
    for name, path in _modules().items():
        lines = path.read_text(encoding="utf-8").count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if lines > LONGEST_MODULE and "Why one module:" not in doc:
            long.append(f"{name}: {lines} lines")
    assert not long, long


def test_the_layout_test_sees_an_upward_import(tmp_path):
    """The rule can fail: an io module that imported the command line would be caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("from ssae.app.cli import main\nfrom ..app import cli\n", encoding="utf-8")
    name = "ssae.io.probe"
    assert _stage(name) < _stage("ssae.app.cli")
    assert "ssae.app.cli" in _imports(name, probe)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#+\s+(.*)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_documentation_link_resolves():
    documents = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "report").glob("*.md"))]
    broken = []
    for document in documents:
        text = document.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            path = (document.parent / file_part).resolve() if file_part else document
            if not path.exists():
                broken.append(f"{document.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path.read_text(encoding="utf-8")):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_short_read():
    assert len((REPO / "README.md").read_text(encoding="utf-8")) <= 16_000


def test_the_command_reference_is_generated_from_the_parsers():
    from ssae.app.reference import command_reference

    assert (REPO / "docs" / "command-line.md").read_text(encoding="utf-8") == command_reference(), (
        "docs/command-line.md is out of date: python -m ssae.app.reference > docs/command-line.md"
    )
