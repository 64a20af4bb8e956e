"""Shared test helpers: stack settings on ports of their own, so tests never touch a developer's stack."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings

from onfinish.settings import StackSettings

# No per-example deadline (a loaded 2-core CI machine is not a slow implementation), and in CI the
# same examples every run: a property test there either always passes or always fails.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REPO = Path(__file__).resolve().parents[1]


def isolated_stack_settings(home: Path, port_base: int) -> StackSettings:
    """Stack settings whose ports are port_base + the usual last digits (x092, x093, x081, x432; the
    Alertmanager and its webhook receiver x094 and x095).

    Keep port_base + 432 below 32768: the kernel hands out ports above that to client sockets.
    """
    return StackSettings(
        home=home,
        kafka_port=port_base + 92,
        kafka_controller_port=port_base + 93,
        registry_port=port_base + 81,
        postgres_port=port_base + 432,
        alertmanager_port=port_base + 94,
        webhook_port=port_base + 95,
    )
