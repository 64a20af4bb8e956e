"""Alert episodes: what turns a stream of findings into one alert per incident.

Every round, a family of rules (the alert conditions, the anomalies, the budgets, drift) reports
the findings that hold now, each for one subject (a rule and what it judged: a series, a budget, a
model's versions). Per subject the tracker keeps a small state machine::

    (nothing) --holds--> pending --held for `for`--> firing --stops holding--> clearing
        ^                   |                          ^                          |
        |                   +--stops holding-----------|--------------------------+ (cooldown passed:
        +----------------------------------------------|-- resolved <-------------+  resolved)
                                                       +--holds again within the cooldown

- it **fires** once the finding has held in every round for the rule's ``for`` duration (at once
  when it is zero), opening an episode whose start is the first round it held in;
- it stays **one episode** while it holds, and while it holds again within the ``cooldown`` after
  stopping, so a flapping series is one episode (one firing, one resolution), not one per flap;
- it **resolves** once it has not held for the cooldown; the episode ends when it stopped holding.

A subject the family reports nothing for in a round does not hold (a series below its minimum
number of calls, a budget in a new period, a model whose drift is gone). The episode id hashes
the rule, the subject and the start, so a worker that replays the same rounds finds the same ids.
The peak is the worst value seen from the first round the finding held (highest, or lowest for a
rule watching a fall); an episode's firing record is sent again when its peak grows.

After a restart the worker replays recent rounds quietly and then `reconcile`s with the episodes
published before: those keep their ids and peaks, and one the replay found open that was never
published fires now. Everything here is pure; clock, queries and sending are the caller's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

Direction = Literal["above", "below"]
TransitionKind = Literal["firing", "update", "resolved"]


@dataclass(frozen=True)
class Timing:
    """How long a finding must hold before it fires, and stay away before its episode resolves."""

    for_duration: timedelta = timedelta(0)
    cooldown: timedelta = timedelta(0)


@dataclass(frozen=True)
class RuleInfo:
    """What the tracker must know of a rule without a finding in hand (restored episodes)."""

    family: str
    timing: Timing
    direction: Direction = "above"


@dataclass(frozen=True)
class Labels:
    """The dimensions of what was judged, as far as they apply (they become Alertmanager labels)."""

    provider: str | None = None
    model_id: str | None = None
    feature_id: str | None = None
    environment: str | None = None


@dataclass(frozen=True)
class Finding:
    """A rule that holds for a subject in one round, with what it saw."""

    family: str
    rule: str
    rules_version: int
    severity: str
    subject_kind: str
    subject: str
    observed: float
    threshold: float
    message: str
    at: datetime
    timing: Timing = Timing()
    baseline: float | None = None
    direction: Direction = "above"
    labels: Labels = Labels()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.subject_kind, self.subject)


@dataclass
class Episode:
    """One incident of one rule and subject, from its start to its end."""

    episode_id: str
    rule: str
    rules_version: int
    severity: str
    subject_kind: str
    subject: str
    labels: Labels
    started_at: datetime
    fired_at: datetime
    observed: float
    peak: float
    threshold: float
    message: str
    baseline: float | None = None
    direction: Direction = "above"
    ended_at: datetime | None = None
    resolved_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.subject_kind, self.subject)

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class Transition:
    """A change to publish: an episode fired, its peak grew, or it resolved (a snapshot of it)."""

    kind: TransitionKind
    episode: Episode


def episode_id(rule: str, subject_kind: str, subject: str, started_at: datetime) -> str:
    identity = "\x1f".join((rule, subject_kind, subject, started_at.isoformat()))
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def worse(direction: Direction, value: float, than: float) -> bool:
    return value > than if direction == "above" else value < than


class _Phase(StrEnum):
    pending = "pending"
    firing = "firing"
    clearing = "clearing"


@dataclass
class _Track:
    family: str
    phase: _Phase
    since: datetime  # pending: first round it held; clearing: first round it did not
    timing: Timing
    direction: Direction
    worst: float | None = None  # worst value while pending
    episode: Episode | None = None


@dataclass
class EpisodeTracker:
    """Per rule and subject, the state machine of the module docstring."""

    rules: Mapping[str, RuleInfo] = field(default_factory=dict)
    _tracks: dict[tuple[str, str, str], _Track] = field(default_factory=dict)
    _rounds: dict[str, datetime] = field(default_factory=dict)
    _first_rounds: dict[str, datetime] = field(default_factory=dict)

    def round(self, family: str, at: datetime, findings: Iterable[Finding]) -> list[Transition]:
        """One round of `family` at `at`: the findings that hold now; every subject of the family
        that was pending or open and has no finding now has stopped holding. Rounds of a family
        come in time order; an older round than the last is ignored."""
        last = self._rounds.get(family)
        if last is not None and at < last:
            return []
        self._rounds[family] = at
        self._first_rounds.setdefault(family, at)
        held = {finding.key: finding for finding in findings if finding.family == family}
        transitions: list[Transition] = []
        for key, finding in held.items():
            transitions += self._holds(key, finding)
        for key, track in list(self._tracks.items()):
            if track.family == family and key not in held:
                transitions += self._stopped(key, track, at)
        return transitions

    def _holds(self, key: tuple[str, str, str], finding: Finding) -> list[Transition]:
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = _Track(
                finding.family, _Phase.pending, finding.at, finding.timing, finding.direction
            )
        track.timing, track.direction = finding.timing, finding.direction
        if track.phase is _Phase.pending:
            if track.worst is None or worse(finding.direction, finding.observed, track.worst):
                track.worst = finding.observed
            if finding.at - track.since < finding.timing.for_duration:
                return []
            track.phase = _Phase.firing
            track.episode = Episode(
                episode_id=episode_id(finding.rule, finding.subject_kind, finding.subject, track.since),
                rule=finding.rule,
                rules_version=finding.rules_version,
                severity=finding.severity,
                subject_kind=finding.subject_kind,
                subject=finding.subject,
                labels=finding.labels,
                started_at=track.since,
                fired_at=finding.at,
                observed=finding.observed,
                peak=track.worst,
                threshold=finding.threshold,
                message=finding.message,
                baseline=finding.baseline,
                direction=finding.direction,
            )
            return [Transition("firing", replace(track.episode))]
        episode = track.episode
        assert episode is not None
        track.phase = _Phase.firing  # holding again within the cooldown continues the episode
        episode.observed, episode.message, episode.baseline = (
            finding.observed,
            finding.message,
            finding.baseline,
        )
        episode.threshold, episode.severity = finding.threshold, finding.severity
        if worse(finding.direction, finding.observed, episode.peak):
            episode.peak = finding.observed
            return [Transition("update", replace(episode))]
        return []

    def _stopped(self, key: tuple[str, str, str], track: _Track, at: datetime) -> list[Transition]:
        if track.phase is _Phase.pending:
            del self._tracks[key]
            return []
        if track.phase is _Phase.firing:
            track.phase, track.since = _Phase.clearing, at
        if at - track.since < track.timing.cooldown:
            return []
        episode = track.episode
        assert episode is not None
        del self._tracks[key]
        return [Transition("resolved", replace(episode, ended_at=track.since, resolved_at=at))]

    # --- what is open, and what was published before a restart ---------------------------------

    def open_episodes(self) -> list[Episode]:
        """Every episode that has fired and not resolved (firing, or clearing within its cooldown)."""
        return [replace(t.episode) for t in self._tracks.values() if t.episode is not None]

    def reconcile(
        self,
        published_open: Iterable[Episode],
        resolved_ids: Iterable[str],
        at: datetime,
        replayed: Iterable[Transition] = (),
    ) -> list[Transition]:
        """Merge what was published before a restart into the state a quiet replay rebuilt.

        `replayed` are the replay's own transitions. A published open episode keeps its id, start
        and firing time (its peak is the worse of the two) when the replay ends with it open; when
        the replay saw it resolve, or never saw it hold in rounds that covered its cooldown, it
        resolves now; a family that was not replayed leaves it open for its next round to judge.
        An open episode the replay found that was resolved already is dropped, and one it found
        that was never published fires now. A published one whose rule is no longer configured
        resolves now, since nothing will ever judge it again.
        """
        published = {episode.key: episode for episode in published_open}
        resolved = set(resolved_ids)
        ends: dict[tuple[str, str, str], Episode] = {}
        for transition in replayed:
            if transition.kind == "resolved":
                ends[transition.episode.key] = transition.episode  # the latest of each subject
        transitions: list[Transition] = []
        for key, track in list(self._tracks.items()):
            episode = track.episode
            if episode is None:
                continue
            adopted = published.pop(key, None)
            if adopted is not None:
                if worse(track.direction, episode.peak, adopted.peak):
                    adopted.peak = episode.peak
                adopted.observed, adopted.message = episode.observed, episode.message
                track.episode = replace(adopted, direction=track.direction)
            elif episode.episode_id in resolved:
                del self._tracks[key]
            else:
                transitions.append(Transition("firing", replace(episode)))
        for key, episode in published.items():
            info = self.rules.get(episode.rule)
            if info is None:
                ended = replace(
                    episode, ended_at=at, resolved_at=at, message=f"{episode.message} (rule retired)"
                )
                transitions.append(Transition("resolved", ended))
                continue
            end = ends.get(key)
            if end is not None and end.resolved_at is not None and end.resolved_at >= episode.started_at:
                peak = end.peak if worse(info.direction, end.peak, episode.peak) else episode.peak
                finished = replace(episode, ended_at=end.ended_at, resolved_at=end.resolved_at, peak=peak)
                transitions.append(Transition("resolved", finished))
                continue
            episode = replace(episode, direction=info.direction)
            track = _Track(
                info.family, _Phase.firing, episode.fired_at, info.timing, info.direction, episode=episode
            )
            first = self._first_rounds.get(info.family)
            if first is not None:  # replayed, and never held: it stopped holding before the replay
                track.phase, track.since = _Phase.clearing, max(first, episode.fired_at)
                if at - track.since >= info.timing.cooldown:
                    transitions.append(
                        Transition("resolved", replace(episode, ended_at=track.since, resolved_at=at))
                    )
                    continue
            self._tracks[key] = track
        return transitions
