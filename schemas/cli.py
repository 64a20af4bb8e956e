"""`onfinish schema`: register the contract in the schema registry and check changes against it.

Imported only by the command line (it needs the cli extra); the SDK never imports it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onfinish.cli.console import console, errors, fail_cleanly
from onfinish.settings import KafkaSettings, RegistrySettings

if TYPE_CHECKING:
    pass


schema_app = typer.Typer(
    help=(
        "Govern the event contract (schemas/avro/*.avsc) in the schema registry. Subjects follow "
        "<topic>-<record full name>, so OnFinishEvent and Feedback share onfinish.raw, each under "
        "FULL_TRANSITIVE compatibility."
    ),
    no_args_is_help=True,
)

PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--topic-prefix",
        help="Prefix of the topics whose subjects to use (default: ONFINISH_KAFKA_TOPIC_PREFIX).",
    ),
]


def _prefix(prefix: str | None) -> str:
    return prefix or KafkaSettings().topic_prefix


@schema_app.command("register")
def schema_register(topic_prefix: PrefixOption = None) -> None:
    """Register the contract's schemas on ONFINISH_REGISTRY_URL and set FULL_TRANSITIVE on their subjects.

    Registering an unchanged schema again is harmless: it keeps its id and version.
    """
    from onfinish.schemas.governance import register

    registrations = fail_cleanly(lambda: register(RegistrySettings(), _prefix(topic_prefix)))
    for r in registrations:
        console.print(f"[green]✓[/] {r.subject}: id {r.schema_id}, version {r.version}, {r.compatibility}")


@schema_app.command("check")
def schema_check(
    schema_files: Annotated[list[Path], typer.Argument(help="Changed .avsc files to check.", exists=True)],
    topic_prefix: PrefixOption = None,
) -> None:
    """Check changed schema files against every registered version of their subject (FULL_TRANSITIVE).

    Exits 1 with the registry's reasons when a change would break a producer or a consumer, e.g. a
    removed field or a changed type; a new optional field with a default passes.
    """
    from onfinish.schemas.governance import check

    failed = False
    for schema_file in schema_files:
        result = fail_cleanly(partial(check, RegistrySettings(), _prefix(topic_prefix), schema_file))
        if not result.versions_checked and result.compatible:
            console.print(f"[green]✓[/] {schema_file}: {result.subject} has no registered version yet")
        elif result.compatible:
            versions = ", ".join(map(str, result.versions_checked))
            console.print(
                f"[green]✓[/] {schema_file}: compatible with versions {versions} of {result.subject}"
            )
        else:
            failed = True
            errors.print(f"[bold red]✗[/] {schema_file}: incompatible with {result.subject}", highlight=False)
            for version, messages in result.incompatible.items():
                for message in messages:
                    errors.print(f"    version {version}: {message}", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)
