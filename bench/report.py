"""Benchmark figures, and where they are written: a JSON file and the README's table."""

from __future__ import annotations

import json
import os
import platform
import re
import sysconfig
import time
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

README_START = "<!-- BENCH:START -->"
README_END = "<!-- BENCH:END -->"
SLOW_POLL_S = 1.0  # rate_until's longest wait between two readings of a worker's counter


@dataclass(frozen=True)
class Figure:
    """One measured figure next to the baseline it is compared with."""

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    higher_is_better: bool = True
    section: str = ""  # the `python -m bench` section that measured it

    def of(self, section: str) -> Figure:
        return replace(self, section=section)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def machine() -> dict[str, object]:
    """Where the figures were measured. An interpreter built without profile-guided optimisation
    (pyenv's default) runs the workers 10-20% slower than the official images' CPython."""
    flags = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "python_pgo": "--enable-optimizations" in flags,
        "python_lto": "--with-lto" in flags,
    }


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(
    figures: list[Figure],
    path: Path,
    *,
    measured_at: str | None = None,
    remeasured: dict[str, str] | None = None,
) -> None:
    """The figures as JSON; `measured_at` is the whole run's time, `remeasured` the time of each
    section measured again since (by `python -m bench SECTION`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, object] = {
        "measured_at": measured_at or now(),
        "machine": machine(),
        "figures": [{**asdict(f), "ratio": round(f.ratio, 4)} for f in figures],
    }
    if remeasured:
        document["remeasured"] = dict(sorted(remeasured.items()))
    path.write_text(json.dumps(document, indent=2) + "\n")


@dataclass(frozen=True)
class Results:
    """What a results file holds."""

    figures: list[Figure]
    measured_at: str
    remeasured: dict[str, str]


def read_json(path: Path) -> Results:
    document = json.loads(path.read_text())
    known = {f.name for f in fields(Figure)}
    return Results(
        [Figure(**{k: v for k, v in item.items() if k in known}) for item in document["figures"]],
        str(document["measured_at"]),
        dict(document.get("remeasured", {})),
    )


def merge(previous: list[Figure], fresh: list[Figure]) -> list[Figure]:
    """`previous` with the sections `fresh` measured again replaced by it, in the same places (a
    section new to `previous` goes last). A figure of a file written before figures named their
    section belongs to the fresh section of the same name's figure."""
    by_name = {f.name: f.section for f in fresh}
    sections = {f.section for f in fresh}
    merged: list[Figure] = []
    placed: set[str] = set()
    for figure in previous:
        section = figure.section or by_name.get(figure.name, "")
        if section not in sections:
            merged.append(figure)
        elif section not in placed:
            merged += [f for f in fresh if f.section == section]
            placed.add(section)
    for section in sorted(sections - placed, key=[f.section for f in fresh].index):
        merged += [f for f in fresh if f.section == section]
    return merged


def _format(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def markdown_table(figures: list[Figure], remeasured: dict[str, str] | None = None) -> str:
    where = machine()
    build = "with" if where["python_pgo"] else "without"
    lines = [
        f"Measured on {where['cpus']} CPUs, CPython {where['python']} "
        f"built {build} profile-guided optimisation.",
    ]
    if remeasured:
        again = ", ".join(f"{section} ({at})" for section, at in sorted(remeasured.items()))
        lines.append(f"Measured again since the whole run: {again}.")
    lines += [
        "",
        "| figure | value | baseline (same run) | baseline value | ratio |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {_format(f.value)} {f.unit} | {f.baseline_name} | {_format(f.baseline)} {f.unit} "
            f"| {f.ratio:.2f} |"
        )
    return "\n".join(lines)


def update_readme(figures: list[Figure], readme: Path, remeasured: dict[str, str] | None = None) -> None:
    text = readme.read_text()
    block = f"{README_START}\n{markdown_table(figures, remeasured)}\n{README_END}"
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block for the benchmark table")
    readme.write_text(pattern.sub(lambda _: block, text))


def metrics_text(port: int, timeout_s: float = 2) -> str | None:
    """A local worker's /metrics page; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
            return str(response.read().decode())
    except OSError:
        return None


def metric(port: int, name: str) -> float:
    """A worker's Prometheus metric (the first line starting with `name`); -1 while it does not answer."""
    text = metrics_text(port)
    if text is None:
        return -1.0
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rate_until(
    port: int, name: str, target: float, *, timeout_s: float = 600, poll_s: float = 0.05
) -> float | None:
    """Per second, from the first nonzero reading of a worker's counter `name` until it reaches
    `target` (the worker's start-up left out); None if it does not within `timeout_s`.

    Polled every `poll_s` until the counter moves and again near the end, but in between only as
    often as half the time the rate so far says is left (at most every `SLOW_POLL_S`): a scrape
    costs the worker CPU and its GIL (prometheus-client's exposition took 2.8 ms of the sink's CPU
    per scrape and 5-8 ms of a processor's, whose scrape also measures lag on its event loop),
    so polling every 20-50 ms throughout took 5-15% of the worker the benchmark measures.
    """
    began = first = 0.0
    seen, seen_at = 0.0, 0.0  # the latest value, and when it was first read
    before = time.perf_counter()  # the reading before this one
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = metric(port, name)
        now = time.perf_counter()
        if value > 0 and not began:
            began, first = now, value
        if value >= target:
            # It got there between the last two readings: the middle is the unbiased guess.
            return (target - first) / ((before + now) / 2 - began)
        before = now
        if value != seen:
            seen, seen_at = value, now
        wait = poll_s
        if began and value > first:
            # The end the rate so far predicts, from when this value came (counters move in steps:
            # a sink's by a whole insert), approached by halving the wait, then fast past it.
            end = seen_at + (target - value) * (seen_at - began) / (value - first)
            wait = min(max((end - now) / 2, poll_s), SLOW_POLL_S)
        time.sleep(wait)
    return None
