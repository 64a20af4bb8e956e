"""Sessions: running totals per conversation, idempotent by offset, corrected by later feedback."""

from __future__ import annotations

import json
from datetime import timedelta

from onfinish.processors.sessions import SessionState
from onfinish.schemas.models import Status
from tests.processors.test_windows import T0, _enriched


def test_a_session_adds_up_its_calls_once():
    state = SessionState()
    calls = [
        _enriched(
            i,
            session_id="s1",
            model_id=("gpt-4o" if i < 2 else "o3-mini"),
            status=Status.timeout if i == 1 else Status.success,
            quality_score=0.5 + i / 10,
        )
        for i in range(3)
    ]
    for offset, call in enumerate(calls):
        assert state.apply_event(call, offset)
        assert not state.apply_event(call, offset), "a replayed offset is ignored"
    snapshot = state.snapshot("s1", 4, T0)
    assert (snapshot.turns, snapshot.errors, snapshot.models) == (3, 1, ["gpt-4o", "o3-mini"])
    assert abs(snapshot.cost_usd - 0.009) < 1e-12 and snapshot.prompt_tokens == 300
    assert abs(snapshot.quality_mean - 0.6) < 1e-12
    assert snapshot.first_at == calls[0].started_at and snapshot.last_at == calls[2].finished_at
    assert snapshot.version == 2 and snapshot.raw_partition == 4


def test_feedback_corrects_a_call_instead_of_adding_one():
    state = SessionState()
    state.apply_event(_enriched(0, session_id="s1", quality_score=0.9), 0)
    state.apply_event(_enriched(1, session_id="s1", quality_score=0.7), 1)
    assert state.apply_feedback("r0", regenerated=True, edited=False, quality=0.3, offset=2)
    assert state.apply_feedback("r0", regenerated=True, edited=True, quality=0.2, offset=3)
    assert not state.apply_feedback("r0", regenerated=True, edited=True, quality=0.1, offset=3)
    snapshot = state.snapshot("s1", 0, T0)
    assert (snapshot.turns, snapshot.regenerations, snapshot.edits) == (2, 1, 1)
    assert abs(snapshot.quality_mean - (0.2 + 0.7) / 2) < 1e-12
    assert state.apply_feedback("unknown-request", regenerated=True, edited=False, quality=None, offset=4)
    assert state.snapshot("s1", 0, T0).regenerations == 1


def test_the_gap_ends_a_session_and_the_state_survives_its_changelog_form():
    state = SessionState()
    state.apply_event(_enriched(0, session_id="s1", user_id="u_abc"), 0)
    assert not state.is_over(T0 + timedelta(minutes=29))
    assert state.is_over(T0 + timedelta(minutes=31))
    restored = SessionState.from_state(json.loads(json.dumps(state.to_state(0))))
    assert restored.snapshot("s1", 0, T0) == state.snapshot("s1", 0, T0)
