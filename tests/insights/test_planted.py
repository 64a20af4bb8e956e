"""The insights against loadgen traffic with planted effects: each planted effect is found, and no
effect is claimed where none was planted (the false-alarm rate measured over seeds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from onfinish.errors import ConfigurationError
from onfinish.insights.compare import Calls, compare
from onfinish.insights.readouts import drift
from onfinish.insights.stats import Verdict
from onfinish.loadgen.traffic import Effect, TrafficGenerator, TrafficProfile
from onfinish.query.client import ClientQuerier
from onfinish.schemas.contract import ENRICHED_EVENT
from onfinish.schemas.models import EnrichedEvent, OnFinishEvent
from onfinish.sinks.migrate import apply_migrations
from onfinish.sinks.tables import TABLES
from tests.chdb import chdb_engine
from tests.sinks.test_tables import ENRICHER, NOW, decoded_record, insert, rows_of

SLOWER_B = Effect.parse("variant_id=B:latency=1.15")


def _calls_of(seed: int, count: int, variant: str, *effects: Effect) -> Calls:
    """The calls of one variant in loadgen's traffic (latency, TTFT, status, sessions; no pricing)."""
    profile = TrafficProfile(malformed_share=0, feedback_share=0, pii_share=0, effects=effects)
    return Calls.from_rows(
        {
            "ok": item.status.value == "success",
            "latency_ms": item.latency_ms,
            "ttft_ms": item.ttft_ms,
            "cost_usd": item.reported_cost_usd,
            "quality": None,
            "regenerated": item.regenerated,
            "edited": item.edited,
            "session_id": item.session_id,
        }
        for item in TrafficGenerator(profile, seed).items(count)
        if isinstance(item, OnFinishEvent) and item.variant_id == variant
    )


def _events(seed: int, count: int, *effects: Effect) -> list[EnrichedEvent]:
    profile = TrafficProfile(malformed_share=0, feedback_share=0, pii_share=0, effects=effects)
    items = TrafficGenerator(profile, seed).items(count)
    return [
        ENRICHER.enrich(item, 0, offset, NOW)
        for offset, item in enumerate(items)
        if isinstance(item, OnFinishEvent)
    ]


def test_effects_are_parsed_and_refused_with_the_reason() -> None:
    effect = Effect.parse("model_id=gpt-4o,feature_id=chat:version=v2:errors=0.1:from=100:to=200")
    assert effect.match == (("model_id", "gpt-4o"), ("feature_id", "chat"))
    assert (effect.model_version, effect.error_share, effect.start, effect.stop) == ("v2", 0.1, 100, 200)
    for bad, reason in [
        ("variant_id=B:speed=2", "unknown"),
        ("variant_id:latency=2", "field=value"),
        ("variant_id=B:latency=-1", "positive"),
        ("variant_id=B:errors=2", r"\[0, 1\]"),
        ("variant_id=B:latency=fast", "fast"),
    ]:
        with pytest.raises(ConfigurationError, match=reason):
            Effect.parse(bad)


def test_an_effect_changes_only_the_events_it_selects() -> None:
    plain = _events(3, 1000)
    planted = _events(3, 1000, SLOWER_B)
    assert [e.event_id for e in plain] == [e.event_id for e in planted], "the same traffic otherwise"
    for before, after in zip(plain, planted, strict=True):
        factor = 1.15 if before.variant_id == "B" else 1.0
        assert after.latency_ms == pytest.approx(before.latency_ms * factor, abs=1e-3)
        assert after.finished_at == before.finished_at
        assert after.started_at <= after.finished_at


# A calibration: 20 seeds, each drawing 12,000 loadgen items four times: minutes of CPU. It measures the
# statistics' power and false-alarm rate rather than checking code paths (test_readouts.py and
# test_compare.py do that in seconds), so it runs with the integration suite in `make test`.
@pytest.mark.integration
def test_the_readout_finds_a_planted_slowdown_and_nothing_where_none_was_planted() -> None:
    """Calls of a session are correlated (one model, one feature, a growing context) and variants
    are assigned per session: only intervals that take the session as the unit keep the false
    alarms near the nominal rate on this traffic (taking calls as independent: 10 in 20 seeds)."""
    found, false_alarms, seeds, count = 0, 0, range(20), 12_000
    for seed in seeds:
        a, b = (_calls_of(100 + seed, count, v, SLOWER_B) for v in "AB")
        readout = compare(a, b, a_name="A", b_name="B", resamples=300)
        found += readout.difference("latency_mean_ms").verdict is Verdict.WORSE or (
            readout.difference("latency_p50_ms").verdict is Verdict.WORSE
        )
        a, b = (_calls_of(100 + seed, count, v) for v in "AB")
        false_alarms += compare(a, b, a_name="A", b_name="B", resamples=300).claims_difference
    print(f"planted 15% slowdown found in {found} of {len(seeds)} seeds; {false_alarms} false alarms")
    assert found >= 0.8 * len(seeds), f"the planted 15% slowdown was found in {found} of {len(seeds)} seeds"
    assert false_alarms <= 0.15 * len(seeds), f"{false_alarms} false alarms in {len(seeds)} seeds"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """Loadgen traffic in which gpt-4o gets a new version half way through, with 10% more errors."""
    rollout = Effect.parse("model_id=gpt-4o:version=gpt-4o-2026-11-01:errors=0.1:from=1500")
    events = _events(11, 3_000, rollout)
    with chdb_engine(tmp_path_factory.mktemp("chdb-planted")) as engine:
        engine.command("CREATE DATABASE IF NOT EXISTS planted")
        engine.database = "planted"
        apply_migrations(engine)
        spec = TABLES[ENRICHED_EVENT.full_name]
        insert(engine, spec, rows_of(spec, [decoded_record(ENRICHED_EVENT, e) for e in events]))
        yield engine


def test_drift_finds_the_planted_version_with_more_errors_and_only_it(client: Client) -> None:
    found = drift(ClientQuerier(client), seconds=10 * 365 * 24 * 3600)
    worse = [d for d in found if d.worse]
    assert [(d.current.model_id, d.current.version) for d in worse] == [("gpt-4o", "gpt-4o-2026-11-01")]
    assert worse[0].previous.version == "gpt-4o-2024-08-06"
    assert worse[0].readout.difference("success_rate").verdict is Verdict.WORSE
