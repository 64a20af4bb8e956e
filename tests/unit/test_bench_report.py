"""The benchmark report: figures with their same-run baseline, where they were measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import README_END, README_START, Figure, markdown_table, update_readme, write_json

FIGURES = [Figure("worker", 2_500.0, "events/s", "raw loop", 10_000.0)]


def test_json_holds_each_figure_with_its_ratio_and_the_interpreter_build(tmp_path: Path):
    write_json(FIGURES, tmp_path / "latest.json")
    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["figures"][0]["ratio"] == 0.25
    assert isinstance(document["machine"]["python_pgo"], bool)
    assert document["machine"]["cpus"] >= 1


def test_the_readme_block_is_replaced_and_says_how_python_was_built(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(FIGURES, readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert "| worker | 2,500 events/s | raw loop | 10,000 events/s | 0.25 |" in text
    assert "profile-guided optimisation" in markdown_table(FIGURES)


def test_a_readme_without_the_block_is_refused(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("no block\n")
    with pytest.raises(SystemExit, match="BENCH:START"):
        update_readme(FIGURES, readme)
