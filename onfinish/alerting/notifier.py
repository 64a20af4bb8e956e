"""The notifier: hands episodes to Alertmanager, at least once, in a thread of its own.

The insights worker publishes an episode's firing or resolved record to onfinish.alerts first (the
durable record), then hands it here. The notifier keeps, per episode, the latest record not yet
accepted by Alertmanager and the firing record of every open episode, and posts:

- what is pending, as soon as it is handed over;
- every open episode again each ``resend_s``, saying it lasts four times that: Alertmanager then
  keeps it firing through three missed posts, and resolves it by itself if the worker is gone for
  good, as it does for Prometheus. A re-post has the same labels, so it is the same alert to
  Alertmanager and never a second notification.

A post that fails because Alertmanager is away is tried again with exponential back-off (1 s,
doubling, at most ``retry_max_s``: onfinish/retry.py) until it is accepted or the worker stops;
records handed over meanwhile join the next attempt, a resolution replacing its firing. Nothing is
dropped while Alertmanager is away: a record leaves the queue only once Alertmanager accepted it.
What a worker that stopped had not delivered yet, the next one posts again at start (watch.py:
open episodes, and those resolved in the last ``resend_resolved_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from onfinish.alerting.alertmanager import (
    AlertmanagerClient,
    AlertmanagerRefused,
    AlertmanagerUnavailable,
    episode_alerts,
)
from onfinish.alerting.settings import AlertingSettings
from onfinish.retry import Backoff, Stopped, retry_until_stopped
from onfinish.schemas.models import Alert

log = logging.getLogger(__name__)
# An alert Alertmanager is told about lasts this many resend intervals (Prometheus uses 4 too).
LASTS_RESENDS = 4


class Notifier:
    def __init__(
        self,
        client: AlertmanagerClient,
        settings: AlertingSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self._pending: dict[str, Alert] = {}  # episode id -> latest record Alertmanager has not accepted
        self._open: dict[str, Alert] = {}  # episode id -> firing record of an open episode
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_resend = time.monotonic()
        self.posted = 0  # alerts Alertmanager accepted, re-posts included
        self.failed_attempts = 0

    # --- what the worker hands over --------------------------------------------------------------

    def hand(self, records: Iterable[Alert]) -> None:
        """Episode records to deliver (facts are not notified and are ignored)."""
        with self._lock:
            for record in records:
                if record.episode_id is None or record.state not in ("firing", "resolved"):
                    continue
                self._pending[record.episode_id] = record
                if record.state == "firing":
                    self._open[record.episode_id] = record
                else:
                    self._open.pop(record.episode_id, None)
        self._wake.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._open)

    # --- delivery --------------------------------------------------------------------------------

    def deliver(self) -> int:
        """One attempt: what is pending, and every open episode when a re-post is due. Returns how
        many alerts Alertmanager accepted; raises AlertmanagerUnavailable while it is away."""
        due = time.monotonic() - self._last_resend >= self.settings.resend_s
        with self._lock:
            batch = dict(self._pending)
            if due:
                for episode, record in self._open.items():
                    batch.setdefault(episode, record)
        if not batch:
            if due:
                self._last_resend = time.monotonic()
            return 0
        alerts = episode_alerts(
            batch.values(),
            now=self.clock(),
            lasts=timedelta(seconds=LASTS_RESENDS * self.settings.resend_s),
            dashboard_url=self.settings.dashboard_url,
        )
        try:
            self.client.post_alerts(alerts)
        except AlertmanagerUnavailable:
            self.failed_attempts += 1
            raise
        except AlertmanagerRefused as exc:
            # Alertmanager keeps the valid alerts of a post and says why it refused the others;
            # posting the same again would be refused again, so they are logged and let go.
            log.error("Alertmanager refused alerts", extra={"error": str(exc)[:500], "alerts": len(alerts)})
        with self._lock:
            for episode, record in batch.items():
                if self._pending.get(episode) is record:  # not replaced by a newer record meanwhile
                    del self._pending[episode]
        if due:
            self._last_resend = time.monotonic()
        self.posted += len(alerts)
        return len(alerts)

    def _waiting(self, error: Exception, delay: float) -> None:
        log.warning(
            "Alertmanager away; trying again",
            extra={"wait_s": round(delay, 1), "pending": self.pending, "error": str(error)[:300]},
        )

    def run(self) -> None:
        """Deliver until stopped: at once when records are handed over, and at every re-post."""
        backoff = Backoff(initial_s=min(1.0, self.settings.retry_max_s), max_s=self.settings.retry_max_s)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                delivered = retry_until_stopped(
                    self.deliver,
                    backoff=backoff,
                    stop=self._stop,  # a stop cuts a back-off short
                    on_failure=self._waiting,
                    retry_on=(AlertmanagerUnavailable,),
                )
            except Stopped:
                break  # stopped while Alertmanager was away
            if delivered:
                log.info("alerts posted to Alertmanager", extra={"alerts": delivered})
            left = self.settings.resend_s - (time.monotonic() - self._last_resend)
            self._wake.wait(max(0.05, left))

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="alert-notifier", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread, with one last attempt for what is pending (the next worker posts
        anything left again at its start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self.pending:
            try:
                self.deliver()
            except AlertmanagerUnavailable as exc:
                log.warning(
                    "alerts left undelivered at stop", extra={"pending": self.pending, "error": str(exc)}
                )
