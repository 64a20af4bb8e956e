"""Enrichment: priced, scored and redacted records that pass the enriched contract, with no PII left."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from onfinish.loadgen.traffic import TrafficGenerator, TrafficProfile
from onfinish.processors.enrichment import Enricher
from onfinish.processors.pricing import PriceCatalog
from onfinish.processors.quality import QualityWeights
from onfinish.processors.redaction import PatternSet
from onfinish.schemas.contract import ENRICHED_EVENT
from onfinish.schemas.models import EnrichedEvent, OnFinishEvent

ENRICHER = Enricher(
    PriceCatalog.load(),
    QualityWeights(),
    PatternSet.load(),
    frozenset({"app.version", "tenant_id", "fallback_from"}),
    b"test-key",
)
NOW = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)


def _events(count: int, pii_share: float = 0.02) -> tuple[TrafficGenerator, list[OnFinishEvent]]:
    generator = TrafficGenerator(
        TrafficProfile(malformed_share=0, feedback_share=0, pii_share=pii_share), seed=5
    )
    return generator, [i for i in generator.items(count) if isinstance(i, OnFinishEvent)]


def test_enriched_records_pass_the_contract_and_encode():
    _, events = _events(500)
    for offset, event in enumerate(events):
        enriched = ENRICHER.enrich(event, 3, offset, NOW)
        validated = EnrichedEvent.model_validate(enriched.__dict__)  # the full contract's checks
        assert enriched == validated == EnrichedEvent.model_construct(**enriched.__dict__)
        assert enriched.model_fields_set == validated.model_fields_set
        assert ENRICHED_EVENT.encode(ENRICHED_EVENT.to_datum(validated))
        assert validated.cost_source.startswith("catalog:")
        assert validated.cost_usd > 0 or validated.prompt_tokens + validated.completion_tokens == 0
        assert 0 <= validated.quality_score <= 1
        assert (validated.raw_partition, validated.raw_offset, validated.processed_at) == (3, offset, NOW)


def test_a_record_constructed_complete_needs_every_field():
    enriched = ENRICHER.enrich(_events(5)[1][0], 0, 0, NOW)
    fields = dict(enriched.__dict__)
    del fields["quality_score"]
    with pytest.raises(ValueError, match="exactly its fields"):
        EnrichedEvent.construct_complete(fields)
    with pytest.raises(ValueError, match="exactly its fields"):
        EnrichedEvent.construct_complete({**enriched.__dict__, "surprise": 1})


def test_no_planted_pii_and_no_raw_content_survive():
    generator, events = _events(1000, pii_share=0.3)
    texts = []
    for offset, event in enumerate(events):
        enriched = ENRICHER.enrich(
            event.model_copy(update={"prompt_text": "my card 4111 1111 1111 1111"}), 0, offset, NOW
        )
        assert "prompt_text" not in enriched.__dict__ and "completion_text" not in enriched.__dict__
        assert set(enriched.attributes) <= {"app.version", "tenant_id", "fallback_from"}
        texts.append(str(enriched.__dict__))
    everything = "\n".join(texts)
    assert generator.planted_pii
    assert not [pii for pii in generator.planted_pii if pii in everything]


def test_user_ids_are_pseudonymised_with_the_key():
    _, events = _events(50)
    event = next(e for e in events if e.user_id)
    first = ENRICHER.enrich(event, 0, 0, NOW).user_id
    assert first and event.user_id and first != event.user_id and event.user_id not in first
    assert ENRICHER.enrich(event, 0, 1, NOW).user_id == first
    other_key = Enricher(
        ENRICHER.catalog, ENRICHER.weights, ENRICHER.patterns, ENRICHER.attribute_allow_list, b"k2"
    )
    assert other_key.enrich(event, 0, 0, NOW).user_id != first
