"""From decoded spans to durable records: map, read feedback, spool, and count what happened.

Both paths of onfinish collect call this: the OTLP/HTTP receiver per request, the Collector topic
worker per batch of Kafka records. It returns what the caller answers with (OTLP's partial success:
how many spans were rejected and why) and whether the spool refused records, in which case the
caller asks for a retry instead of answering success. Nothing here does I/O but the SDK's
`Emitter.spool_batch`, which returns once the records are durable.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from onfinish.collect.feedback import FeedbackEvent, FeedbackReader
from onfinish.collect.mapping import Ignored, Rejected, SpanData, SpanMapper
from onfinish.collect.otlp import PartialSuccess
from onfinish.errors import describe_exception
from onfinish.producers.emitter import DurableBatch

log = logging.getLogger(__name__)


class Spooler(Protocol):
    """What ingestion uses of the SDK's Emitter (a fake in unit tests)."""

    def spool_batch(self, items: Sequence[Any], *, sync: bool = False) -> DurableBatch: ...


@dataclass
class Outcome:
    """What became of one request's (or one Kafka batch's) spans and events."""

    spans: int = 0
    events: int = 0  # OnFinishEvents spooled
    feedback: int = 0  # Feedback records spooled
    ignored: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)  # the first message of each reject reason
    refused: int = 0  # records the spool could not take: ask the sender to retry

    def reject(self, rejected: Rejected) -> None:
        self.rejected[rejected.reason] += 1
        self.messages.setdefault(rejected.reason, rejected.message)

    def partial_success(self) -> PartialSuccess:
        count = sum(self.rejected.values())
        if not count:
            return PartialSuccess()
        reasons = "; ".join(
            f"{n} {reason} (e.g. {self.messages[reason]})" for reason, n in self.rejected.most_common()
        )
        return PartialSuccess(count, f"{count} rejected: {reasons}"[:4096])


class Ingest:
    def __init__(
        self, mapper: SpanMapper, feedback: FeedbackReader, spooler: Spooler, *, sync: bool = False
    ) -> None:
        self.mapper = mapper
        self.feedback = feedback
        self.spooler = spooler
        self.sync = sync

    def spans(self, spans: Sequence[SpanData]) -> Outcome:
        """Map every span (and read feedback from every span's events) and spool the results."""
        outcome = Outcome(spans=len(spans))
        records: list[dict[str, Any]] = []
        kinds: list[str] = []  # "event" or "feedback", parallel to records, for the counts
        mapper, reader = self.mapper, self.feedback
        now = datetime.now(UTC)
        for span in spans:
            try:
                mapped = mapper.map(span)
            except Exception as exc:  # a bug must cost one span, not the request or the worker
                mapped = self._bug(exc)
            if isinstance(mapped, Ignored):
                outcome.ignored[mapped.reason] += 1
            elif isinstance(mapped, Rejected):
                outcome.reject(mapped)
            else:
                records.append(mapped)
                kinds.append("event")
            for event in span.events:
                if reader.is_feedback(event.name, event.attributes):
                    self._feedback(
                        FeedbackEvent(
                            event.name,
                            event.time_unix_nano,
                            event.attributes,
                            span.trace_id,
                            span.span_id,
                            span.attributes,
                        ),
                        now,
                        records,
                        kinds,
                        outcome,
                    )
        self._spool(records, kinds, outcome)
        return outcome

    def events(self, events: Iterable[FeedbackEvent]) -> Outcome:
        """Log records: those that are feedback are spooled; the rest are ignored and counted."""
        outcome = Outcome()
        records: list[dict[str, Any]] = []
        kinds: list[str] = []
        now = datetime.now(UTC)
        for event in events:
            outcome.spans += 1
            if self.feedback.is_feedback(event.name, event.attributes):
                self._feedback(event, now, records, kinds, outcome)
            else:
                outcome.ignored["not_feedback"] += 1
        self._spool(records, kinds, outcome)
        return outcome

    def _feedback(
        self,
        event: FeedbackEvent,
        now: datetime,
        records: list[dict[str, Any]],
        kinds: list[str],
        outcome: Outcome,
    ) -> None:
        try:
            read = self.feedback.read(event, now)
        except Exception as exc:  # as in `spans`: one record, not the request
            read = self._bug(exc)
        if isinstance(read, Rejected):
            outcome.reject(read)
        else:
            records.append(read)
            kinds.append("feedback")

    @staticmethod
    def _bug(exc: Exception) -> Rejected:
        """A span (or feedback event) the mapping failed on: rejected as processing_error, logged
        by type and place (the exception's text may quote the span's data)."""
        message = describe_exception(exc)
        log.error("a span or span event could not be read (a bug)", extra={"error": message})
        return Rejected("processing_error", message)

    def _spool(self, records: list[dict[str, Any]], kinds: list[str], outcome: Outcome) -> None:
        if not records:
            return
        result = self.spooler.spool_batch(records, sync=self.sync)
        rejected = {index for index, _ in result.rejected}
        for _, reason in result.rejected:
            outcome.reject(Rejected("contract_violation", reason))
        # Records are spooled in order until the spool is full; the refused are the last ones.
        spooled_upto = len(records) - result.refused
        for index, kind in enumerate(kinds[:spooled_upto]):
            if index in rejected:
                continue
            if kind == "event":
                outcome.events += 1
            else:
                outcome.feedback += 1
        outcome.refused = result.refused
