"""Shared test helpers: stack settings on ports of their own, so tests never touch a developer's stack."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings

from onfinish.settings import StackSettings

# No per-example deadline (a loaded 2-core CI machine is not a slow implementation), and in CI the
# same examples every run: a property test there either always passes or always fails.
# `make test-unit` sets ONFINISH_TEST_PROFILE=unit: property tests try a tenth of their examples
# (10 where they ask for Hypothesis's default 100), a quick check while editing; `make test` and CI
# try them all.
UNIT_PROFILE = os.environ.get("ONFINISH_TEST_PROFILE") == "unit"
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.register_profile("unit", deadline=None, max_examples=10, derandomize=bool(os.environ.get("CI")))
settings.load_profile("unit" if UNIT_PROFILE else "ci" if os.environ.get("CI") else "dev")


def scaled_examples(count: int) -> int:
    """max_examples for a property test that asks for `count`: a tenth (at least 10) in the unit profile."""
    return max(10, count // 10) if UNIT_PROFILE else count


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
