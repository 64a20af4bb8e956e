"""What security costs: the SDK's acknowledged throughput and the sink's rows/s over SASL_SSL, each
beside the same figure over PLAINTEXT measured in the same run.

A second local stack runs secured (`stack up --secure`: SASL_SSL with SCRAM-SHA-512, the registry
over TLS with basic auth) on ports of its own, next to the plain one the other benchmarks use. Both
sides run as the admin principal, whose ACL check is the same one lookup as any other principal's,
so the difference is TLS and SASL. Target: the secured figure within 25% of the plain one.

Run alone with `python -m bench.security` (it starts both stacks and stops them).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from bench import foundation, sdk, sinks
from bench.report import Figure, markdown_table
from onfinish.settings import RegistrySettings, StackSettings
from onfinish.stack.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
SDK_EVENTS = 100_000


def secured_stack_settings(home: Path) -> StackSettings:
    """The secured stack of the benchmarks, on ports apart from the plain one's and the tests'."""
    return StackSettings(
        home=home,
        kafka_port=25092,
        kafka_controller_port=25093,
        registry_port=25081,
        postgres_port=25432,
        secure=True,
    )


def run(stack: Stack) -> list[Figure]:
    secured = Stack(secured_stack_settings(ROOT / ".onfinish-bench-secure"))
    print("== security: starting the secured stack", file=sys.stderr, flush=True)
    secured.up()
    spool_root = Path(tempfile.mkdtemp(prefix="onfinish-bench-security-"))
    try:
        plain_registry = RegistrySettings(url=stack.settings.registry_url)
        secure_registry = secured.security.registry_settings()
        events = sdk._events(SDK_EVENTS)
        # Plain first, then secured, then plain again: the better plain figure is kept, so a
        # cold first pass never flatters the secured one.
        plain_rates = [
            sdk.acknowledged_rate(stack.kafka_settings, plain_registry, spool_root / "plain-1", events)
        ]
        secure_sdk = sdk.acknowledged_rate(
            secured.kafka_settings, secure_registry, spool_root / "tls", events
        )
        plain_rates.append(
            sdk.acknowledged_rate(stack.kafka_settings, plain_registry, spool_root / "plain-2", events)
        )
        with tempfile.TemporaryDirectory() as scratch:
            plain_sink, _ = sinks.sink_rate(
                stack.kafka_settings, plain_registry, sinks.plain_connection(stack), Path(scratch)
            )
            connection = {
                **secured.security.kafka_environment("admin"),
                **secured.security.registry_environment(),
            }
            secure_sink, _ = sinks.sink_rate(
                secured.kafka_settings, secure_registry, connection, Path(scratch)
            )
    finally:
        shutil.rmtree(spool_root, ignore_errors=True)
        secured.down()
    return [
        Figure(
            "SDK throughput over SASL_SSL (SCRAM-SHA-512), acknowledged",
            secure_sdk,
            "events/s",
            "same over PLAINTEXT",
            max(plain_rates),
        ),
        Figure(
            "sink worker over SASL_SSL + registry TLS, Kafka to chDB events",
            secure_sink,
            "rows/s",
            "same over PLAINTEXT",
            plain_sink,
        ),
    ]


def main() -> None:
    """Only these figures: the plain stack of the benchmarks, the secured one, and the two pairs."""
    stack = Stack(foundation.stack_settings(ROOT / ".onfinish-bench"))
    stack.up()
    try:
        figures = run(stack)
    finally:
        stack.down()
    print(markdown_table(figures))
    for figure in figures:
        print(f"{figure.name}: {100 * (1 - figure.ratio):.1f}% below plaintext", file=sys.stderr)


if __name__ == "__main__":
    main()
