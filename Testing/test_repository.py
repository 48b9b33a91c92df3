"""The repository keeps its promises: CI runs the README's test command, files are where they say."""

import re

from conftest import REPO


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    setup = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    demo, tests = _readme_commands()
    assert "ssae demo" in demo and "pytest" in tests
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert tests.strip() in ci_lines


def test_shipped_resources_exist():
    assert (REPO / "Resources" / "Models" / "ssae-dense-nichart.safetensors").is_file()
    for patient in ("patient07", "patient19"):
        assert (REPO / "Resources" / "SampleData" / "MSLUB" / patient / "flair.nii.gz").is_file()
        assert (REPO / "Resources" / "SampleData" / "MSLUB" / patient / "consensus_gt.nii.gz").is_file()
