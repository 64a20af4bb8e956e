"""Enrich and redact: a validated event becomes the record that leaves the processors.

Cost from the price catalog (processors/pricing.py), model metadata, the implicit quality score
(processors/quality.py), then redaction (processors/redaction.py): every free-text field and the
values of allow-listed attributes are masked, other attributes dropped, user_id pseudonymised with
a keyed hash, every other identifier or dimension a pattern finds PII in pseudonymised by the same
hash, and raw prompt or completion text never passes. Pure: the same event, partition, offset and
time give the same record.

Pricing and scoring read the event as it came (a catalog names models, not their pseudonyms); what
leaves, and what sessions, windows and rules group by, is the cleaned record. `key` and `feedback`
clean a record's Kafka key and a Feedback's ids the same way, so that sessions and feedback still
meet their calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from onfinish.processors.pricing import PriceCatalog, compute_cost
from onfinish.processors.quality import Behaviour, QualityWeights, score_behaviour
from onfinish.processors.redaction import PatternSet, clean_identifier, pseudonymise, redact_attributes
from onfinish.schemas.models import EnrichedEvent, Feedback, OnFinishEvent, RoutingStrategy

# Free-text fields of the event: anything a provider or a service may have put a person's data in.
# A match is masked in place.
FREE_TEXT_FIELDS = ("error_message", "error_code", "error_type", "finish_reason")
# Every other string of the contract a producer chooses: ids and dimensions. A value a pattern finds
# PII in is pseudonymised whole (redaction.clean_identifier); any other passes as it is.
IDENTIFIER_FIELDS = (
    "request_id",
    "session_id",
    "service",
    "environment",
    "region",
    "deployment_id",
    "feature_id",
    "variant_id",
    "prompt_template_id",
    "provider",
    "model_id",
    "model_version",
    "prompt_hash",
    "sdk_name",
    "sdk_version",
)
# W3C trace context ids, lowercase hex of these lengths, pass as they are (they join the call to
# its trace, and 16 random hex digits are all decimal and Luhn-valid once in ~37,000 span ids);
# any other spelling is an identifier like the rest.
TRACE_ID_LENGTHS = {"trace_id": 32, "span_id": 16}
_HEX_DIGITS = frozenset("0123456789abcdef")


def is_trace_context_id(value: str, length: int) -> bool:
    """Whether ``value`` is a W3C trace context id: ``length`` lowercase hex digits."""
    return len(value) == length and _HEX_DIGITS.issuperset(value)


@dataclass(frozen=True)
class Enricher:
    catalog: PriceCatalog
    weights: QualityWeights
    patterns: PatternSet
    attribute_allow_list: frozenset[str]
    pseudonym_key: bytes

    def enrich(
        self, event: OnFinishEvent, partition: int, offset: int, processed_at: datetime
    ) -> EnrichedEvent:
        cost = compute_cost(self.catalog, event)
        metadata = self.catalog.metadata(event.provider, event.model_id)
        fields = dict(event.__dict__)
        del fields["prompt_text"], fields["completion_text"]
        redact = self.patterns.redact
        for name in FREE_TEXT_FIELDS:
            if fields[name]:
                fields[name] = redact(fields[name])
        fields["safety_flags"] = [redact(flag) for flag in event.safety_flags]
        fields["attributes"] = redact_attributes(event.attributes, self.attribute_allow_list, self.patterns)
        if event.user_id is not None:
            fields["user_id"] = pseudonymise(event.user_id, self.pseudonym_key)
        for name in IDENTIFIER_FIELDS:
            if fields[name]:
                fields[name] = self.identifier(fields[name])
        for name, length in TRACE_ID_LENGTHS.items():
            value = fields[name]
            if value is not None and not is_trace_context_id(value, length):
                fields[name] = self.identifier(value)
        # Every input was validated on the way in and every computed value is in range by
        # construction, so the record is built without a second validation pass.
        fields.update(
            cost_input_usd=float(cost.input_usd),
            cost_cached_input_usd=float(cost.cached_input_usd),
            cost_output_usd=float(cost.output_usd),
            cost_reasoning_usd=float(cost.reasoning_usd),
            cost_usd=float(cost.total_usd),
            cost_source=cost.source,
            model_family=metadata.family if metadata else None,
            context_window=metadata.context_window if metadata else None,
            quality_score=score_behaviour(Behaviour.of(event), self.weights),
            cache_hit=event.routing_strategy is RoutingStrategy.cache,
            processed_at=processed_at,
            redaction_version=self.patterns.version,
            raw_partition=partition,
            raw_offset=offset,
        )
        return EnrichedEvent.construct_complete(fields)

    def identifier(self, value: str) -> str:
        """``value`` as it is, or its keyed pseudonym when a pattern finds PII in it."""
        return clean_identifier(value, self.patterns, self.pseudonym_key)

    def key(self, record: OnFinishEvent | Feedback) -> str:
        """The record's session key (session_id, else request_id) as the enriched record has it:
        what sessions are kept and outputs keyed by."""
        return self.identifier(record.session_id or record.request_id)

    def feedback(self, feedback: Feedback) -> Feedback:
        """``feedback`` with its request and session ids cleaned as an event's are, so that it finds
        the call it is about and nothing it carries leaves verbatim (quality updates)."""
        request_id = self.identifier(feedback.request_id)
        session_id = None if feedback.session_id is None else self.identifier(feedback.session_id)
        if request_id == feedback.request_id and session_id == feedback.session_id:
            return feedback
        return Feedback.construct_complete(
            {**feedback.__dict__, "request_id": request_id, "session_id": session_id}
        )
