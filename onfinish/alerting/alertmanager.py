"""Prometheus Alertmanager's v2 API: episodes as Alertmanager alerts, silences, and what it holds.

An episode's record becomes one Alertmanager alert. Its labels identify it (Alertmanager merges
every post with the same labels into one alert, which is how a re-post or a second worker is not
a second notification): ``alertname`` and ``rule`` (the rule's name), ``severity``, ``subject``
and, where they apply, ``model``, ``feature``, ``environment``, plus ``source="onfinish"``. Its
annotations say what people need: the message, the observed value, the threshold, the peak, the
episode id, and a link to the dashboard filtered to the model over a range that covers the
episode. ``startsAt`` is when the condition began to hold; a firing alert's ``endsAt`` lies
``lasts`` ahead (Alertmanager resolves it by itself if no post renews it, as Prometheus does), a
resolved one's is when the condition cleared.

Plain urllib, like the project's other small HTTP edges (the registry, the query endpoint): four
JSON calls do not need a client library.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr

from onfinish.errors import OnfinishError
from onfinish.schemas.models import Alert

API = "/api/v2"
SOURCE = "onfinish"
# The dashboard's ranges (sinks/dashboard/index.html), in minutes: a link picks the shortest that
# covers the episode from a quarter of an hour before it started.
DASHBOARD_RANGES = (15, 30, 60, 180, 360, 1440, 10080)
_LEAD = timedelta(minutes=15)


class AlertmanagerUnavailable(OnfinishError):
    """Alertmanager did not answer, or answered with a server error: worth trying again."""


class AlertmanagerRefused(OnfinishError):
    """Alertmanager refused the request as invalid: trying again would not help."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def dashboard_link(base_url: str, model_id: str | None, started_at: datetime, now: datetime) -> str:
    """The dashboard filtered to `model_id`, over the shortest range that shows the whole episode."""
    needed = (now - started_at + _LEAD).total_seconds() / 60
    since = next((r for r in DASHBOARD_RANGES if r >= needed), DASHBOARD_RANGES[-1])
    query = {"since": str(since)} | ({"model": model_id} if model_id else {})
    return f"{base_url.rstrip('/')}/?{urllib.parse.urlencode(query)}"


def labels_of(record: Alert) -> dict[str, str]:
    """The labels that identify an episode's alert in Alertmanager (empty ones left out)."""
    labels = {
        "alertname": record.rule,
        "rule": record.rule,
        "severity": record.severity,
        "subject": record.subject,
        "model": record.model_id or "",
        "feature": record.feature_id or "",
        "environment": record.environment or "",
        "source": SOURCE,
    }
    return {name: value for name, value in labels.items() if value}


def alertmanager_alert(
    record: Alert, *, now: datetime, lasts: timedelta, dashboard_url: str
) -> dict[str, Any]:
    """An episode's firing or resolved record as a postable Alertmanager alert."""
    if record.state not in ("firing", "resolved") or record.started_at is None:
        raise ValueError(f"alert {record.alert_id} is a fact: only episodes are sent to Alertmanager")
    link = dashboard_link(dashboard_url, record.model_id, record.started_at, now)
    annotations = {
        "summary": f"{record.rule} on {record.subject}",
        "message": record.message,
        "observed": _number(record.observed),
        "threshold": _number(record.threshold),
        "peak": _number(record.peak),
        "baseline": _number(record.baseline),
        "episode_id": record.episode_id or "",
        "started_at": _iso(record.started_at),
        "dashboard": link,
    }
    ends = (record.ended_at or record.at) if record.state == "resolved" else now + lasts
    return {
        "labels": labels_of(record),
        "annotations": {name: value for name, value in annotations.items() if value},
        "startsAt": _iso(record.started_at),
        "endsAt": _iso(ends),
        "generatorURL": link,
    }


class AlertmanagerClient:
    """The few calls onfinish makes to one Alertmanager."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, token: SecretStr | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)  # noqa: S310 - the configured Alertmanager
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            if exc.code >= 500 or exc.code == 429:
                raise AlertmanagerUnavailable(
                    f"Alertmanager at {self.url} answered {exc.code} to {method} {path}: {detail}"
                ) from None
            raise AlertmanagerRefused(
                f"Alertmanager at {self.url} refused {method} {path} ({exc.code}): {detail}"
            ) from None
        except (OSError, TimeoutError) as exc:  # refused, reset, timed out: it is away
            raise AlertmanagerUnavailable(f"Alertmanager at {self.url} does not answer: {exc}") from None
        return json.loads(text) if text.strip() else None

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """POST /api/v2/alerts. Alertmanager keeps the valid ones even when it refuses others."""
        if alerts:
            self._request("POST", f"{API}/alerts", alerts)

    def alerts(self, matchers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (active, silenced and inhibited), optionally by label."""
        query = [("filter", f'{name}="{value}"') for name, value in (matchers or {}).items()]
        path = f"{API}/alerts" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        found = self._request("GET", path)
        return list(found or [])

    def create_silence(
        self,
        matchers: Mapping[str, str],
        *,
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str,
    ) -> str:
        """POST /api/v2/silences with equality matchers; the new silence's id."""
        body = {
            "matchers": [
                {"name": name, "value": value, "isRegex": False, "isEqual": True}
                for name, value in matchers.items()
            ],
            "startsAt": _iso(starts_at),
            "endsAt": _iso(ends_at),
            "createdBy": created_by,
            "comment": comment,
        }
        answer = self._request("POST", f"{API}/silences", body)
        return str(answer["silenceID"])

    def silences(self) -> list[dict[str, Any]]:
        return list(self._request("GET", f"{API}/silences") or [])

    def status(self) -> dict[str, Any]:
        """GET /api/v2/status: version, uptime and the configuration it runs."""
        answer = self._request("GET", f"{API}/status")
        assert isinstance(answer, dict)
        return answer

    def receivers(self) -> list[str]:
        return [str(r["name"]) for r in self._request("GET", f"{API}/receivers") or []]


def episode_alerts(
    records: Iterable[Alert], *, now: datetime, lasts: timedelta, dashboard_url: str
) -> list[dict[str, Any]]:
    return [alertmanager_alert(r, now=now, lasts=lasts, dashboard_url=dashboard_url) for r in records]
