"""`python -m bench`: run every benchmark, print the table, write the JSON and the README table."""

from __future__ import annotations

from pathlib import Path

from bench import foundation
from bench.report import markdown_table, update_readme, write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    figures = foundation.run(ROOT / ".onfinish-bench")
    print(markdown_table(figures))
    write_json(figures, ROOT / "bench" / "results" / "latest.json")
    update_readme(figures, ROOT / "README.md")


if __name__ == "__main__":
    main()
