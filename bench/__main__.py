"""`python -m bench`: run every benchmark, print the table, write the JSON and the README table."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import alerting, collect, foundation, pipeline, processors, sdk, security, sinks, soak
from bench.report import markdown_table, update_readme, write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    stack, figures = foundation.stack_start(foundation.stack_settings(ROOT / ".onfinish-bench"))
    try:
        for name, bench in (
            ("foundation", foundation.run),
            ("sdk", sdk.run),
            ("collect", collect.run),
            ("processors", processors.run),
            ("soak", soak.run),
            ("alerting", alerting.run),
            ("sinks", sinks.run),
            ("security", security.run),
            ("end to end", pipeline.run),
        ):
            print(f"== {name}", file=sys.stderr, flush=True)
            figures += bench(stack)
    finally:
        stack.down()
    print(markdown_table(figures))
    write_json(figures, ROOT / "bench" / "results" / "latest.json")
    update_readme(figures, ROOT / "README.md")


if __name__ == "__main__":
    main()
