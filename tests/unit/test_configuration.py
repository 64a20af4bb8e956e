"""The configuration reference is generated from the settings classes and kept true."""

from __future__ import annotations

from onfinish.cli.configuration import reference_markdown, rows, settings_classes
from tests.conftest import REPO


def test_the_committed_reference_is_what_the_code_says():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(), "regenerate: onfinish config --markdown > docs/configuration.md"


def test_every_setting_is_described_and_prefixed():
    for settings_class in settings_classes():
        for variable, _, description in rows(settings_class):
            assert variable.startswith("ONFINISH_"), variable
            assert description, f"{variable} has no description"
