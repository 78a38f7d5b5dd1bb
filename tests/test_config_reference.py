"""The configuration reference is written from the code, and the committed copy matches it."""

from __future__ import annotations

import re
from pathlib import Path

from spearfl.algorithms.registry import algorithm_names
from spearfl.config import all_sections
from spearfl.config_reference import render, undocumented_keys

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"


def test_the_committed_reference_is_the_generated_one():
    committed = REFERENCE.read_text(encoding="utf-8")
    assert committed == render(), (
        "docs/configuration.md is stale: python -m spearfl.config_reference docs/configuration.md"
    )


def test_every_key_says_what_it_does():
    assert undocumented_keys() == []


def test_the_reference_has_a_table_per_section_and_a_row_per_key():
    text = render()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == [
        "top level",
        *(f"`{name}`" for name in all_sections()),
        "What each algorithm reports",
    ]
    assert "| `lambda_lose` | float | 0.1 | ≥ 0 | weight of the unlikelihood term" in text
    assert "| `provider` | `oracle` \\| " in text  # a Literal lists its values
    assert "| `reward_clip` | float or none | none | > 0 |" in text
    assert "| `num_demos` | int | 0 | ≥ 0, only the default | kept for the paper's layout" in text
    assert "Read by `grpo`, `rltf_sd`." in text  # the grpo section, from the registry
    for name in algorithm_names():  # the metrics table names every algorithm
        assert re.search(rf"^\| `{name}` \| ", text, flags=re.M), name


def test_the_readme_points_at_the_reference_and_names_every_section():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    part = readme.split("## Configuration reference\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/configuration.md" in part
    for name in all_sections():
        assert f"`{name}`" in part, name
