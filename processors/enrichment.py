"""Enrich and redact: a validated event becomes the record that leaves the processors.

Cost from the price catalog (processors/pricing.py), model metadata, the implicit quality score
(processors/quality.py), then redaction (processors/redaction.py): every free-text field and the
values of allow-listed attributes are masked, other attributes dropped, user_id pseudonymised with
a keyed hash, and raw prompt or completion text never passes. Pure: the same event, partition,
offset and time give the same record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from onfinish.processors.pricing import PriceCatalog, compute_cost
from onfinish.processors.quality import Behaviour, QualityWeights, score_behaviour
from onfinish.processors.redaction import PatternSet, pseudonymise, redact_attributes
from onfinish.schemas.models import EnrichedEvent, OnFinishEvent, RoutingStrategy

# Free-text fields of the event: anything a provider or a service may have put a person's data in.
FREE_TEXT_FIELDS = ("error_message", "error_code", "error_type", "finish_reason")


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
