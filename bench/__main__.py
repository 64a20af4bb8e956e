"""`python -m bench`: run the benchmarks, print the table, write the JSON and the README table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench import alerting, collect, foundation, pipeline, processors, sdk, security, sinks, soak
from bench.report import Figure, markdown_table, merge, now, read_json, update_readme, write_json
from onfinish.stack.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latest.json"

SECTIONS: dict[str, Callable[[Stack], list[Figure]]] = {
    "foundation": foundation.run,
    "sdk": sdk.run,
    "collect": collect.run,
    "processors": processors.run,
    "soak": soak.run,
    "alerting": alerting.run,
    "sinks": sinks.run,
    "security": security.run,
    "end to end": pipeline.run,
}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Measure onfinish against baselines measured in the same run, on a local stack of its "
            "own (about 45 minutes on 2 cores for every section). Writes bench/results/latest.json "
            "and the README's table. Given sections, measures only those and replaces their figures "
            "in the existing results (each section measures its own baselines, so its ratios hold); "
            "the table then says which sections were measured again, and when."
        ),
    )
    parser.add_argument(
        "sections",
        nargs="*",
        choices=[*SECTIONS, []],  # [] too: argparse checks an empty nargs="*" against the choices
        metavar="SECTION",
        help=f"sections to measure again, of: {', '.join(repr(s) for s in SECTIONS)} (default: all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    chosen = arguments(argv).sections or list(SECTIONS)
    stack, started = foundation.stack_start(foundation.stack_settings(ROOT / ".onfinish-bench"))
    figures = [f.of("foundation") for f in started] if "foundation" in chosen else []
    try:
        for name in chosen:
            print(f"== {name}", file=sys.stderr, flush=True)
            figures += [f.of(name) for f in SECTIONS[name](stack)]
    finally:
        stack.down()
    measured_at, remeasured = now(), {}
    if len(chosen) < len(SECTIONS):
        if not RESULTS.exists():
            raise SystemExit(f"{RESULTS} is missing: run every section first (`make bench`)")
        previous = read_json(RESULTS)
        figures = merge(previous.figures, figures)
        remeasured = {**previous.remeasured, **dict.fromkeys(chosen, measured_at)}
        measured_at = previous.measured_at
    print(markdown_table(figures, remeasured))
    write_json(figures, RESULTS, measured_at=measured_at, remeasured=remeasured)
    update_readme(figures, ROOT / "README.md", remeasured)


if __name__ == "__main__":
    main()
