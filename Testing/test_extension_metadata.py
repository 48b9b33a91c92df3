"""The extension is ready for the Extensions Index: metadata, index entry, terminology, samples.

The index entry is validated against a copy of the index's published schema (Testing/schemas)
and the index's own naming and category rules; every URL in the metadata points at a file that
exists in this repository.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
from urllib.parse import urlsplit

import jsonschema
from conftest import REPO

SCHEMAS = REPO / "Testing" / "schemas"


def _cmake_variables() -> dict[str, str]:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    values = dict(re.findall(r'^set\((\w+) "([^"]*)"\)', text, flags=re.M))
    for _ in range(3):  # expand ${VAR} references
        values = {k: re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), v) for k, v in values.items()}
    return values


def test_the_index_entry_validates_against_the_published_schema_and_rules():
    entry = json.loads((REPO / "Resources" / "ExtensionsIndex" / "SSAE.json").read_text(encoding="utf-8"))
    schema = json.loads((SCHEMAS / "slicer-extension-catalog-entry-schema-v1.0.2.json").read_text(encoding="utf-8"))
    jsonschema.validate(entry, schema)
    assert entry["$schema"].split("#")[0] == schema["$id"].split("#")[0]
    accepted = json.loads((SCHEMAS / "extensions-index-accepted-categories.json").read_text(encoding="utf-8"))["categories"]
    assert entry["category"] in accepted
    url = urlsplit(entry["scm_url"])
    assert url.scheme == "https" and url.netloc
    assert url.path.rstrip("/").split("/")[-1].startswith("Slicer")  # the index wants Slicer* repositories
    assert not "SSAE".lower().startswith("slicer")  # and extension names without the prefix


def test_cmake_metadata_is_complete_and_agrees_with_the_index_entry():
    cmake = _cmake_variables()
    entry = json.loads((REPO / "Resources" / "ExtensionsIndex" / "SSAE.json").read_text(encoding="utf-8"))
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert cmake[key], key
    assert cmake["EXTENSION_HOMEPAGE"].startswith(entry["scm_url"])
    assert cmake["EXTENSION_CATEGORY"] == entry["category"]
    assert cmake["EXTENSION_DEPENDS"].split() == entry["build_dependencies"] == ["PyTorch"]
    raw = f"https://raw.githubusercontent.com{urlsplit(entry['scm_url']).path}/{entry['scm_revision']}/"
    for url in [cmake["EXTENSION_ICONURL"], *cmake["EXTENSION_SCREENSHOTURLS"].split()]:
        assert url.startswith(raw), url
        path = REPO / url[len(raw) :]
        assert path.is_file() and path.read_bytes().startswith(b"\x89PNG"), path


def test_the_terminology_file_defines_what_the_segments_are_tagged_with():
    from SSAEAnomalyLib.results import LESION_TERMINOLOGY, TERMINOLOGY_CONTEXT, TERMINOLOGY_FILE

    terms = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    assert terms["SegmentationCategoryTypeContextName"] == TERMINOLOGY_CONTEXT
    context, category, kind, _, anatomic_context, region, _ = LESION_TERMINOLOGY.split("~")
    assert context == TERMINOLOGY_CONTEXT and anatomic_context == "Anatomic codes - DICOM master list"
    scheme, code, meaning = category.split("^")
    (entry,) = [c for c in terms["SegmentationCodes"]["Category"] if c["CodeValue"] == code]
    assert entry["CodingSchemeDesignator"] == scheme and entry["CodeMeaning"] == meaning and entry["showAnatomy"] == "true"
    scheme, code, meaning = kind.split("^")
    assert any(t["CodeValue"] == code and t["CodeMeaning"] == meaning and t["CodingSchemeDesignator"] == scheme for t in entry["Type"])
    assert region == "SCT^12738006^Brain"


def test_sample_data_sources_point_at_the_shipped_files_with_their_checksums():
    from SSAEAnomalyLib.sample_data import sample_data_sources

    sources = sample_data_sources()
    assert [s["sampleName"] for s in sources] == ["SSAE MSLUB patient 19", "SSAE MSLUB patient 7", "SSAE raw clinical FLAIR", "SSAE follow-up pair"]
    for source in sources:
        lengths = {len(source[k]) for k in ("uris", "fileNames", "nodeNames", "loadFileTypes", "checksums")}
        assert len(lengths) == 1
        for uri, checksum in zip(source["uris"], source["checksums"]):
            path = urlsplit(uri).path
            assert uri.startswith("file://") and checksum == "SHA256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert open(source["thumbnailFileName"], "rb").read(4) == b"\x89PNG"


def test_shipped_model_card_names_its_training_data_without_a_path():
    from ssae.io.model_file import read_card

    data = read_card(REPO / "Resources" / "Models" / "ssae-dense-nichart.safetensors")["training"]["data"]
    assert data["dataset"] == "nichart" and data["subjects"] == 20
    assert "/" not in json.dumps({k: v for k, v in data.items() if k not in ("train_subjects", "val_subjects")})


def test_both_modules_set_up_their_panels_without_pytorch(tmp_path):
    """A factory Slicer has no PyTorch: both panels must set up (on Slicer's contracts, the
    widget double of Testing/slicer_double) and say that it will be installed when needed,
    without importing it. PyTorch and every package the module's installer offers (safetensors,
    SciPy, matplotlib) are made unimportable, and so is Dask, which the modules never use."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None            # "import torch" raises ImportError
        sys.modules["safetensors"] = None
        sys.modules["scipy"] = None
        sys.modules["matplotlib"] = None
        sys.modules["dask"] = None             # the cluster engine's optional dependency
        sys.modules["distributed"] = None
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "Testing")!r}]
        from pathlib import Path
        import pytest
        from headless_slicer import headless_scene
        from slicer_double import Session
        session = Session(headless_scene()[0], pytest.MonkeyPatch())
        for name in ("SSAEAnomaly", "SSAETraining"):
            harness = session.load_module(name, Path({str(REPO)!r}) / name / f"{{name}}.py")
            session.startup_completed()
            widget = harness.create_widget()
            harness.enter()
            print(widget.ui.deviceLabel.text)
        print(widget.ui.trainButton.enabled)
        session.close()
        assert sys.modules["torch"] is None and "ssae.detection.detector" not in sys.modules
        assert "ssae.detection.cluster" not in sys.modules
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("PyTorch is not installed yet") and lines[1].startswith("PyTorch is not installed yet")
    assert lines[2] == "True"
