"""Breach rules as versioned data, evaluated on events, sessions and windows: each breach once.

Rules are loaded from a TOML file (processors/data/alert_rules.v2.toml by default), validated at
start. A rule records a breach when its metric first exceeds the threshold for a subject: a call
(its request), a session (the call that pushed it over) or a window. Breaches are facts (Alert
state "fact"): stored and shown, never notified; the alert conditions over whole minutes of every
partition (onfinish/alerting) are what notify. The alert's id is deterministic (rule and subject),
so an alert re-emitted after a replay replaces itself downstream.

Window rules see one raw partition's share of a minute (a sample of the traffic, since events are
spread over partitions by session): `min_events` keeps small samples from firing. The packaged
rules have none since version 2.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from datetime import datetime
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from onfinish.errors import ConfigurationError
from onfinish.processors.calls import EnrichedCall
from onfinish.schemas.models import Alert, EnrichedEvent, SessionSnapshot, WindowSnapshot


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["event", "session", "window"]
    metric: str = Field(min_length=1)
    threshold: float = Field(allow_inf_nan=False)
    severity: Literal["info", "warning", "critical"] = "warning"
    min_events: int = Field(default=0, ge=0)
    message: str = Field(min_length=1)


class RuleBook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    rule: list[Rule]

    @classmethod
    def load(cls, path: Path | None = None) -> RuleBook:
        source = path or Path(
            str(resources.files("onfinish.processors").joinpath("data", "alert_rules.v2.toml"))
        )
        try:
            book = cls.model_validate(tomllib.loads(source.read_text()))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise ConfigurationError(f"alert rules {source} are invalid: {exc}") from exc
        names = [r.name for r in book.rule]
        if len(names) != len(set(names)):
            raise ConfigurationError(f"alert rules {source}: rule names must be unique")
        for rule in book.rule:
            if rule.kind == "event" and rule.metric not in EnrichedEvent.model_fields:
                raise ConfigurationError(f"alert rule {rule.name}: events have no field {rule.metric!r}")
            if rule.kind == "session" and rule.metric not in SessionSnapshot.model_fields:
                raise ConfigurationError(f"alert rule {rule.name}: sessions have no field {rule.metric!r}")
            if (
                rule.kind == "window"
                and rule.metric != "error_rate"
                and rule.metric not in WindowSnapshot.model_fields
            ):
                raise ConfigurationError(f"alert rule {rule.name}: windows have no metric {rule.metric!r}")
        return book

    def of_kind(self, kind: str) -> tuple[Rule, ...]:
        return self._by_kind.get(kind, ())

    @cached_property
    def _by_kind(self) -> dict[str, tuple[Rule, ...]]:  # looked up per event: the book is frozen
        return {
            kind: tuple(r for r in self.rule if r.kind == kind) for kind in ("event", "session", "window")
        }


def _alert(
    book: RuleBook,
    rule: Rule,
    subject_kind: str,
    subject: str,
    observed: float,
    at: datetime,
    partition: int,
    provider: str | None,
    model_id: str | None,
    events: int = 0,
) -> Alert:
    alert_id = hashlib.sha256(f"{rule.name}\x1f{subject_kind}\x1f{subject}".encode()).hexdigest()[:32]
    return Alert(
        alert_id=alert_id,
        rule=rule.name,
        rules_version=book.version,
        severity=rule.severity,
        subject_kind=subject_kind,
        subject=subject,
        observed=observed,
        threshold=rule.threshold,
        provider=provider,
        model_id=model_id,
        at=at,
        message=rule.message.format(observed=observed, threshold=rule.threshold, events=events),
        raw_partition=partition,
    )


def _value(record: object, metric: str) -> float | None:
    value = record.get(metric) if isinstance(record, Mapping) else getattr(record, metric, None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def event_alerts(book: RuleBook, event: EnrichedCall) -> list[Alert]:
    """Breaches of event rules by one call (an event is processed once, so each fires once)."""
    alerts = []
    for rule in book.of_kind("event"):
        observed = _value(event, rule.metric)
        if observed is not None and observed > rule.threshold:
            alerts.append(
                _alert(
                    book,
                    rule,
                    "request",
                    event.request_id,
                    observed,
                    event.finished_at,
                    event.raw_partition,
                    event.provider,
                    event.model_id,
                )
            )
    return alerts


def session_alerts(book: RuleBook, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Alert]:
    """Session rules that the latest calls made true (false before them), over snapshot datums."""
    alerts = []
    for rule in book.of_kind("session"):
        now = _value(after, rule.metric)
        then = _value(before, rule.metric) if before is not None else None
        if _newly_breached(rule, now, then):
            assert now is not None
            alerts.append(
                _alert(
                    book,
                    rule,
                    "session",
                    after["session_id"],
                    now,
                    after["last_at"],
                    after["raw_partition"],
                    None,
                    after["models"][-1] if after["models"] else None,
                )
            )
    return alerts


def _window_measure(figures: Mapping[str, Any] | None, rule: Rule) -> float | None:
    if figures is None or figures["events"] < rule.min_events:
        return None
    if rule.metric == "error_rate":
        return figures["errors"] / figures["events"] if figures["events"] else None
    return _value(figures, rule.metric)


def _newly_breached(rule: Rule, now: float | None, then: float | None) -> bool:
    return now is not None and now > rule.threshold and not (then is not None and then > rule.threshold)


def window_breached(book: RuleBook, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether `window_alerts` would fire, from the windows' figures alone (`WindowState.figures`):
    the worker checks every window it touched, and names one (a hash) only when a rule fires."""
    return any(
        _newly_breached(rule, _window_measure(after, rule), _window_measure(before, rule))
        for rule in book.of_kind("window")
    )


def window_alerts(book: RuleBook, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Alert]:
    """Window rules that this window's latest updates made true (false before them), over snapshot
    datums (`after` is a `WindowState.summary`; `before` its figures or summary)."""
    alerts = []
    for rule in book.of_kind("window"):
        now, then = _window_measure(after, rule), _window_measure(before, rule)
        if _newly_breached(rule, now, then):
            assert now is not None
            alerts.append(
                _alert(
                    book,
                    rule,
                    "window",
                    after["window_id"],
                    now,
                    after["window_start"],
                    after["raw_partition"],
                    after["provider"],
                    after["model_id"],
                    events=after["events"],
                )
            )
    return alerts
