"""The episode state machine: fire after `for`, one episode while it holds, resolve after the cooldown,
flapping as one episode (against an independent computation over runs and gaps), and the
reconciliation a restarted worker does with what was published before."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from onfinish.alerting.episodes import (
    Episode,
    EpisodeTracker,
    Finding,
    Labels,
    RuleInfo,
    Timing,
    Transition,
    episode_id,
)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def at(index: int) -> datetime:
    return T0 + index * MINUTE


def finding(
    index: int,
    observed: float = 0.5,
    *,
    for_minutes: int = 0,
    cooldown_minutes: int = 0,
    subject: str = "openai/gpt-4o/production",
    rule: str = "ttft_slow_share",
    family: str = "condition",
    direction: str = "above",
) -> Finding:
    return Finding(
        family=family,
        rule=rule,
        rules_version=1,
        severity="warning",
        subject_kind="series",
        subject=subject,
        observed=observed,
        threshold=0.2,
        message=f"{observed:.0%} slow",
        at=at(index),
        timing=Timing(for_minutes * MINUTE, cooldown_minutes * MINUTE),
        direction=direction,  # type: ignore[arg-type]
        labels=Labels(provider="openai", model_id="gpt-4o", environment="production"),
    )


def run(
    holds: list[bool], *, for_minutes: int, cooldown_minutes: int, tracker: EpisodeTracker | None = None
) -> list[tuple[int, Transition]]:
    """One round a minute; the transitions with the round they came in."""
    tracker = tracker or EpisodeTracker()
    found = []
    for index, held in enumerate(holds):
        findings = (
            [finding(index, for_minutes=for_minutes, cooldown_minutes=cooldown_minutes)] if held else []
        )
        found += [(index, t) for t in tracker.round("condition", at(index), findings)]
    return found


def kinds(found: list[tuple[int, Transition]]) -> list[tuple[int, str]]:
    return [(index, t.kind) for index, t in found if t.kind != "update"]


def test_it_fires_once_the_condition_held_for_the_for_duration():
    found = run([True] * 6, for_minutes=3, cooldown_minutes=0)
    assert kinds(found) == [(3, "firing")]
    episode = found[0][1].episode
    assert episode.started_at == at(0) and episode.fired_at == at(3)
    assert episode.episode_id == episode_id("ttft_slow_share", "series", "openai/gpt-4o/production", at(0))


def test_a_zero_for_fires_in_the_first_round():
    assert kinds(run([True], for_minutes=0, cooldown_minutes=0)) == [(0, "firing")]


def test_a_condition_that_stops_before_its_for_never_fires_and_starts_afresh():
    found = run([True, True, False, True, True, True], for_minutes=2, cooldown_minutes=0)
    assert kinds(found) == [(5, "firing")]
    assert found[0][1].episode.started_at == at(3)


def test_one_episode_while_it_holds_sent_again_only_when_its_peak_grows():
    tracker = EpisodeTracker()
    values = [0.3, 0.5, 0.4, 0.6, 0.6]
    found = [t for i, v in enumerate(values) for t in tracker.round("condition", at(i), [finding(i, v)])]
    assert [(t.kind, t.episode.peak) for t in found] == [("firing", 0.3), ("update", 0.5), ("update", 0.6)]
    assert len({t.episode.episode_id for t in found}) == 1
    (open_,) = tracker.open_episodes()
    assert (open_.observed, open_.peak) == (0.6, 0.6)


def test_it_resolves_when_the_condition_clears_with_the_same_episode_id():
    found = run([True, True, True, False, False], for_minutes=1, cooldown_minutes=0)
    assert kinds(found) == [(1, "firing"), (3, "resolved")]
    firing, resolved = found[0][1].episode, found[1][1].episode
    assert resolved.episode_id == firing.episode_id
    assert (resolved.ended_at, resolved.resolved_at) == (at(3), at(3))


def test_the_cooldown_delays_the_resolution_and_ends_the_episode_when_it_cleared():
    found = run([True, True, False, False, False, False], for_minutes=0, cooldown_minutes=3)
    assert kinds(found) == [(0, "firing"), (5, "resolved")]
    resolved = found[-1][1].episode
    assert (resolved.ended_at, resolved.resolved_at) == (at(2), at(5))


def test_a_flapping_series_is_one_episode():
    flaps = [True, False, True, False, False, True, False, True, False, False, False]
    assert kinds(run(flaps, for_minutes=0, cooldown_minutes=2)) == [(0, "firing"), (10, "resolved")]
    # without a cooldown, every flap would have been an episode of its own
    assert [k for _, k in kinds(run(flaps, for_minutes=0, cooldown_minutes=0))].count("firing") == 4


def test_a_falling_rule_keeps_the_lowest_value_as_its_peak():
    tracker = EpisodeTracker()
    for index, value in enumerate([90.0, 80.0, 85.0]):
        tracker.round("anomaly", at(index), [finding(index, value, family="anomaly", direction="below")])
    (episode,) = tracker.open_episodes()
    assert episode.peak == 80.0


def test_families_are_judged_apart():
    tracker = EpisodeTracker()
    tracker.round("condition", at(0), [finding(0)])
    assert tracker.round("budget", at(1), []) == []  # a budget round says nothing of conditions
    assert len(tracker.open_episodes()) == 1


def test_subjects_are_independent():
    tracker = EpisodeTracker()
    a, b = finding(0, subject="a"), finding(0, subject="b")
    assert [t.episode.subject for t in tracker.round("condition", at(0), [a, b])] == ["a", "b"]
    assert [
        (t.kind, t.episode.subject) for t in tracker.round("condition", at(1), [finding(1, subject="a")])
    ] == [("resolved", "b")]


def expected_episodes(
    holds: list[bool], for_minutes: int, cooldown: int
) -> list[tuple[int, int, int | None]]:
    """The episodes of a sequence of rounds, from its runs of holding rounds and the gaps between
    them: a run long enough for `for` opens an episode (started at the run's start, fired `for`
    rounds later); a later run whose gap is at most the cooldown continues it; a longer gap ends
    it, resolved `cooldown` rounds after its last holding round. (start, fired, resolved or None)."""
    runs, start = [], None
    for index, held in enumerate([*holds, False]):
        if held and start is None:
            start = index
        elif not held and start is not None:
            runs.append((start, index - 1))
            start = None
    episodes: list[tuple[int, int, int | None]] = []
    open_: tuple[int, int] | None = None  # (start, fired)
    last = -1
    for first, end in runs:
        if open_ is not None:
            if first - last - 1 <= cooldown:
                last = end
                continue
            episodes.append((*open_, last + 1 + cooldown))
            open_ = None
        if end - first >= for_minutes:
            open_, last = (first, first + for_minutes), end
    if open_ is not None:
        resolved = last + 1 + cooldown
        episodes.append((*open_, resolved if resolved < len(holds) else None))
    return episodes


@given(
    holds=st.lists(st.booleans(), max_size=40),
    for_minutes=st.integers(0, 3),
    cooldown=st.integers(0, 3),
)
def test_episodes_match_an_independent_computation_over_runs_and_gaps(
    holds: list[bool], for_minutes: int, cooldown: int
):
    found = run(holds, for_minutes=for_minutes, cooldown_minutes=cooldown)
    firings = {t.episode.episode_id: (index, t.episode) for index, t in found if t.kind == "firing"}
    resolutions = {t.episode.episode_id: index for index, t in found if t.kind == "resolved"}
    assert set(resolutions) <= set(firings), "nothing resolves that did not fire"
    actual = sorted(
        (int((e.started_at - T0) / MINUTE), index, resolutions.get(eid))
        for eid, (index, e) in firings.items()
    )
    assert actual == expected_episodes(holds, for_minutes, cooldown)


def test_replaying_the_same_rounds_finds_the_same_episode_ids():
    holds = [False, True, True, True, False, True, True, False, False, False]
    first = run(holds, for_minutes=1, cooldown_minutes=1)
    second = run(holds, for_minutes=1, cooldown_minutes=1)
    assert [t.episode.episode_id for _, t in first] == [t.episode.episode_id for _, t in second]


# --- after a restart: the quiet replay reconciled with what was published --------------------------

INFO = {"ttft_slow_share": RuleInfo("condition", Timing(MINUTE, 2 * MINUTE))}


def replay(holds: list[bool]) -> tuple[EpisodeTracker, list[Transition]]:
    tracker = EpisodeTracker(rules=INFO)
    found = run(holds, for_minutes=1, cooldown_minutes=2, tracker=tracker)
    return tracker, [t for _, t in found]


def published(holds: list[bool]) -> Episode:
    """The open episode a worker that saw `holds` published."""
    (episode,) = replay(holds)[0].open_episodes()
    return episode


def test_an_episode_open_before_and_after_keeps_its_published_identity():
    before = published([True, True, True])
    tracker, replayed = replay([True, True, True, True])
    assert tracker.reconcile([before], [], at(4), replayed) == []
    (episode,) = tracker.open_episodes()
    assert episode.episode_id == before.episode_id and episode.fired_at == before.fired_at


def test_an_episode_the_replay_saw_start_differently_keeps_the_published_one():
    before = replace(published([True, True, True]), episode_id="published-earlier", peak=0.9)
    tracker, replayed = replay([True, True, True])
    assert tracker.reconcile([before], [], at(3), replayed) == []
    (episode,) = tracker.open_episodes()
    assert (episode.episode_id, episode.peak) == ("published-earlier", 0.9)
    later = tracker.round("condition", at(3), [])  # it keeps going as the published episode
    later += tracker.round("condition", at(5), [])
    assert [(t.kind, t.episode.episode_id) for t in later] == [("resolved", "published-earlier")]


def test_an_episode_found_open_that_nobody_published_fires_now():
    tracker, replayed = replay([True, True, True])
    (catch_up,) = tracker.reconcile([], [], at(3), replayed)
    assert catch_up.kind == "firing" and catch_up.episode.started_at == at(0)


def test_an_episode_found_open_that_was_resolved_already_is_dropped():
    tracker, replayed = replay([True, True, True])
    (episode,) = tracker.open_episodes()
    assert tracker.reconcile([], [episode.episode_id], at(3), replayed) == []
    assert tracker.open_episodes() == []


def test_an_open_episode_the_replay_saw_resolve_is_resolved_now():
    before = published([True, True, True])
    tracker, replayed = replay([True, True, True, False, False, False])
    (resolved,) = tracker.reconcile([before], [], at(6), replayed)
    assert resolved.kind == "resolved" and resolved.episode.episode_id == before.episode_id
    assert (resolved.episode.ended_at, resolved.episode.resolved_at) == (at(3), at(5))


def test_an_open_episode_the_replay_never_saw_hold_resolves_once_its_cooldown_is_covered():
    before = replace(published([True, True]), fired_at=at(-10), started_at=at(-11))
    tracker, replayed = replay([False, False, False])
    (resolved,) = tracker.reconcile([before], [], at(3), replayed)
    assert resolved.kind == "resolved" and resolved.episode.ended_at == at(0)


def test_an_open_episode_of_a_family_not_replayed_waits_for_its_next_round():
    budget = replace(published([True, True]), rule="daily", subject_kind="budget")
    tracker = EpisodeTracker(rules={"daily": RuleInfo("budget", Timing())})
    assert tracker.reconcile([budget], [], at(5)) == []
    assert len(tracker.open_episodes()) == 1
    (resolved,) = tracker.round("budget", at(6), [])
    assert resolved.kind == "resolved" and resolved.episode.episode_id == budget.episode_id


def test_an_open_episode_of_a_retired_rule_resolves_now():
    gone = replace(published([True, True]), rule="retired_rule")
    (resolved,) = EpisodeTracker(rules=INFO).reconcile([gone], [], at(5))
    assert resolved.kind == "resolved" and "rule retired" in resolved.episode.message
