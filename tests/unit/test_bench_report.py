"""The benchmark report: figures with their same-run baseline, where they were measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import arguments
from bench.report import (
    README_END,
    README_START,
    Figure,
    markdown_table,
    merge,
    read_json,
    update_readme,
    write_json,
)

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


def test_sections_measured_again_replace_their_figures_in_place_and_keep_the_rest(tmp_path: Path):
    previous = [
        Figure("stack up", 3.0, "s", "cold", 4.0, section="foundation"),
        Figure("worker", 2_500.0, "events/s", "raw loop", 10_000.0, section="processors"),
        Figure("state", 1_131.0, "bytes", "record", 503.0, section="processors"),
        Figure("sink", 140_000.0, "rows/s", "insert", 86_000.0, section="sinks"),
    ]
    write_json(previous, tmp_path / "latest.json", measured_at="2026-12-04T00:00:00Z")
    stored = read_json(tmp_path / "latest.json")
    assert stored.figures == previous and stored.measured_at == "2026-12-04T00:00:00Z"

    fresh = [Figure("worker", 2_600.0, "events/s", "raw loop", 10_400.0, section="processors")]
    merged = merge(stored.figures, fresh)
    assert [(f.name, f.value) for f in merged] == [
        ("stack up", 3.0),
        ("worker", 2_600.0),
        ("sink", 140_000.0),
    ]
    # A section the file did not have goes last.
    assert merge(previous, [Figure("new", 1.0, "x", "y", 2.0, section="collect")])[-1].name == "new"

    write_json(
        merged, tmp_path / "latest.json", measured_at=stored.measured_at, remeasured={"processors": "T"}
    )
    assert read_json(tmp_path / "latest.json").remeasured == {"processors": "T"}
    assert "Measured again since the whole run: processors (T)." in markdown_table(
        merged, {"processors": "T"}
    )


def test_a_file_written_before_figures_named_their_section_is_merged_by_name():
    old = [Figure("worker", 2_500.0, "events/s", "raw loop", 10_000.0), Figure("sink", 1.0, "x", "y", 2.0)]
    fresh = [Figure("worker", 2_600.0, "events/s", "raw loop", 10_400.0, section="processors")]
    assert [(f.name, f.value) for f in merge(old, fresh)] == [("worker", 2_600.0), ("sink", 1.0)]


def test_the_command_line_names_its_sections_and_refuses_others():
    assert arguments([]).sections == []
    assert arguments(["processors", "end to end"]).sections == ["processors", "end to end"]
    with pytest.raises(SystemExit):
        arguments(["processor"])


def test_rate_until_reads_the_counter_rarely_while_the_worker_runs(monkeypatch: pytest.MonkeyPatch):
    # A worker that starts counting at t = 2 s at 1,000 per second, on a virtual clock.
    clock = [0.0]
    readings: list[float] = []

    def fake_metric(port: int, name: str) -> float:
        value = max(0.0, (clock[0] - 2.0) * 1_000)
        readings.append(clock[0])
        return value

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(report, "metric", fake_metric)
    monkeypatch.setattr("bench.report.time.sleep", sleep)
    monkeypatch.setattr("bench.report.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("bench.report.time.monotonic", lambda: clock[0])
    rate = report.rate_until(0, "rows", 60_000, poll_s=0.02)
    assert rate is not None and rate == pytest.approx(1_000, rel=0.01)
    counting = [t for t in readings if t > 2.0]
    # 58 s of counting: every 20 ms would be 2,900 readings; a scrape costs the worker CPU.
    assert len(counting) < 120, len(counting)


def test_rate_until_catches_the_last_step_of_a_counter_that_moves_in_steps(monkeypatch: pytest.MonkeyPatch):
    # A sink: 100,000 rows stored at once every 1.6 s from t = 3 s, read on a virtual clock.
    clock = [0.0]
    monkeypatch.setattr(
        report,
        "metric",
        lambda port, name: 100_000.0 * max(0, int((clock[0] - 3.0) // 1.6) + 1) * (clock[0] >= 3.0),
    )
    monkeypatch.setattr("bench.report.time.sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    monkeypatch.setattr("bench.report.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("bench.report.time.monotonic", lambda: clock[0])
    rate = report.rate_until(0, "rows", 400_000, poll_s=0.02)
    # 300,000 rows between the first step (3.0 s) and the fourth (7.8 s): 62,500 rows/s.
    assert rate == pytest.approx(62_500, rel=0.02)
