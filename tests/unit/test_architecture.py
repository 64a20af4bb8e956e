"""The house's rules, read from the imports of every production module (lazy imports included).

Stages meet only through topics and schemas; the SDK imports no processor or sink code; the core
imports no stage and no application. docs/decisions/0004 and the README's layout say why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

CORE = {"onfinish", "onfinish.errors", "onfinish.settings", "onfinish.logs", "onfinish.runtime",
        "onfinish.retry", "onfinish.offsets", "onfinish.health", "onfinish.security"}  # fmt: skip
STAGES = ("producers", "processors", "schemas", "sinks")
# What each stage may import of onfinish, besides the core and itself.
ALLOWED = {
    "schemas": (),
    "producers": ("schemas",),
    "processors": ("schemas",),
    "sinks": ("schemas",),
}


def _of_onfinish(name: str) -> bool:
    # The package and its modules, not distributions whose names merely start alike: onfinish_native
    # is the processors' own Rust core (processors/native/, decision 0011).
    return name == "onfinish" or name.startswith("onfinish.")


def _onfinish_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if _of_onfinish(alias.name)}
        elif isinstance(node, ast.ImportFrom) and node.module and _of_onfinish(node.module):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _allowed(name: str, own: str, may: tuple[str, ...]) -> bool:
    if (
        name in CORE
        or name.startswith("onfinish.__")
        or any(name.startswith(f"{module}.") for module in CORE - {"onfinish"})
    ):
        return True
    return any(name == f"onfinish.{room}" or name.startswith(f"onfinish.{room}.") for room in (own, *may))


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_the_core_the_schemas_and_itself(stage: str) -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / stage).rglob("*.py"))
        if path.name != "cli.py"  # a command group: imported by the command line alone
        for name in sorted(_onfinish_imports(path))
        if not _allowed(name, stage, ALLOWED[stage])
    ]
    assert not offenders, "\n".join(offenders)


def test_the_core_imports_no_stage_and_no_application() -> None:
    modules = sorted(p for p in (REPO / "onfinish").glob("*.py") if p.name != "__main__.py")
    assert {p.stem for p in modules} == {
        "__init__",
        "errors",
        "settings",
        "logs",
        "runtime",
        "retry",
        "offsets",
        "health",
        "security",
    }, "onfinish/ holds only the core: an application goes in a room of its own"
    offenders = [
        f"{path.name} imports {name}"
        for path in modules
        for name in sorted(_onfinish_imports(path))
        if name not in CORE and not any(name.startswith(f"{module}.") for module in CORE - {"onfinish"})
    ]
    assert not offenders, "\n".join(offenders)
