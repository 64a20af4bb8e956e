"""Every setting of onfinish in one place: the classes, and the reference generated from them.

`onfinish config` prints it; docs/configuration.md is this module's markdown, and a test keeps
that file equal to what the code says (regenerate it with `onfinish config --markdown`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from onfinish.logs import LogSettings
from onfinish.settings import ALL_SETTINGS
from onfinish.settings import is_secret as _is_secret


def settings_classes() -> tuple[type[BaseSettings], ...]:
    from onfinish.alerting.settings import AlertingSettings
    from onfinish.collect.settings import CollectSettings
    from onfinish.insights.watch import InsightSettings
    from onfinish.processors.settings import ProcessorSettings
    from onfinish.producers.settings import ProducerSettings
    from onfinish.query.settings import QuerySettings
    from onfinish.sinks.settings import SinkSettings

    return (
        *ALL_SETTINGS,
        ProducerSettings,
        ProcessorSettings,
        SinkSettings,
        QuerySettings,
        InsightSettings,
        AlertingSettings,
        CollectSettings,
        LogSettings,
    )


def rows(settings_class: type[BaseSettings], *, current: bool = True) -> list[tuple[str, str, str]]:
    """(environment variable, default, description) of each field of `settings_class`.

    A secret's value is never shown: with `current`, whether it is set now (by its variable or its
    `_FILE`); otherwise (the generated reference) whether it has a default.
    """
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    home = str(Path.home())
    now: BaseSettings | None = None
    if current:
        try:
            now = settings_class()
        except Exception:  # a half-configured environment: show the defaults
            now = None

    def shown(name: str, field: FieldInfo) -> str:
        value = field.get_default(call_default_factory=True)
        if not _is_secret(field):
            return str(value).replace(home, "~")
        if now is not None:
            value = getattr(now, name)
        return "(not set)" if value is None or value == SecretStr("") else "(set)"

    return [
        (f"{prefix}{name.upper()}", shown(name, field), field.description or "")
        for name, field in settings_class.model_fields.items()
    ]


def _escaped(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every setting is an environment variable with an embedded default (pydantic-settings).",
        "Generated from the settings classes by `onfinish config --markdown`; a test keeps it true.",
        "A secret (shown as `(set)` or `(not set)`, never its value) may also be read from a file named",
        "by `<VARIABLE>_FILE`, as container secrets are mounted; docs/security.md says which to set.",
    ]
    for settings_class in settings_classes():
        doc = (settings_class.__doc__ or "").strip().splitlines()
        lines += ["", f"## {settings_class.__name__}", ""]
        if doc:
            lines += [doc[0], ""]
        lines += ["| variable | default | meaning |", "| --- | --- | --- |"]
        for variable, default, description in rows(settings_class, current=False):
            cell = _escaped(default) if default else "(none)"
            lines.append(f"| `{variable}` | `{cell}` | {_escaped(description)} |")
    return "\n".join(lines) + "\n"
