"""Quality enrichment: an implicit quality score in [0, 1] for each completion, from behaviour.

Users rarely rate an answer, but they show what they thought of it: they regenerate it, edit it,
wait too long for it, or get a truncated one. This module turns those signals, and an explicit
rating when there is one, into one number that the windows and sessions can average. It is pure:
the same behaviour and weights always give the same score.

The formula
-----------
A call whose status is not ``success`` scores 0. Otherwise the score is the weighted mean of the
signals present::

    score = sum(w_i * s_i for i in S) / sum(w_i for i in S)

    S = {regenerated, edited, latency, token_efficiency}, plus {rating} when a rating is present

with the weights ``w_i`` of :class:`QualityWeights` and these signals, each in [0, 1]:

- ``s_regenerated = 0`` if the user regenerated the answer, else ``1``.
- ``s_edited = 0`` if the user edited the answer, else ``1``.
- ``s_latency``, with L = latency_ms, T = latency_target_ms, U = latency_limit_ms:
  ``1`` if L <= T, ``0`` if L >= U, otherwise ``1 - (3x^2 - 2x^3)`` with x = (L - T) / (U - T)
  (a smoothstep: it falls continuously and without a kink from 1 at the target to 0 at the limit).
- ``s_token_efficiency``, with P prompt and C completion tokens and R = max_completion_ratio:
  ``0`` if the answer was truncated (finish_reason ``length`` or ``max_tokens``, any case) or is
  empty (C = 0); otherwise ``min(1, R / (C / max(P, 1)))``, so a completion more than R times the
  prompt (a runaway generation) loses score in proportion to how far beyond R it went.
- ``s_rating = (rating + 1) / 2``: 0 for -1, 0.5 for 0, 1 for +1.

How the rating dominates: its weight is large next to the behaviour weights, so its share of the
score, rho = w_rating / (w_rating + w_regenerated + w_edited + w_latency + w_token_efficiency), is
0.75 with the defaults. A +1 then scores at least rho and a -1 at most 1 - rho, whatever the
behaviour: any answer rated +1 outranks any answer rated -1 as long as rho > 0.5. Without a rating
the score is the weighted mean of the behaviour signals alone.

Feedback arrives later than its event (a regeneration or a rating minutes after the answer).
:func:`apply_feedback` merges it into the event's :class:`Behaviour` (flags OR-ed, the latest
rating wins) and scores again; the merge is idempotent, so a redelivered Feedback changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Final

from onfinish.errors import ConfigurationError
from onfinish.schemas.models import EnrichedEvent, Feedback, OnFinishEvent, Status

# Providers name truncation differently: OpenAI "length", Anthropic "max_tokens", Gemini "MAX_TOKENS".
TRUNCATION_FINISH_REASONS: Final = frozenset({"length", "max_tokens"})
RATINGS: Final = frozenset({-1, 0, 1})


@dataclass(frozen=True)
class QualityWeights:
    """How much each signal counts, and the references the latency and token signals use.

    The defaults make a regeneration the strongest behavioural signal (the user rejected the answer
    outright), then token efficiency (a truncated answer is visibly incomplete), then an edit (the
    answer was used, but needed fixing), then latency. ``rating`` is three times the behaviour
    weights together, so an explicit rating carries 75% of the score (see the module docstring).
    """

    regenerated: float = 0.35
    edited: float = 0.20
    latency: float = 0.15
    token_efficiency: float = 0.30
    rating: float = 3.0
    latency_target_ms: float = 2_000.0  # at or below: no latency penalty
    latency_limit_ms: float = 20_000.0  # at or above: the latency signal is 0
    max_completion_ratio: float = 10.0  # completion/prompt tokens beyond which an answer is runaway

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"quality weight {field.name} must be finite and >= 0, not {value}")
        # A score must exist for the many events that carry no rating, so it cannot rest on the
        # rating alone.
        if self.behaviour_total <= 0:
            raise ConfigurationError(
                "quality weights regenerated, edited, latency and token_efficiency must not all be zero"
            )
        if not math.isfinite(self.behaviour_total + self.rating):
            raise ConfigurationError("quality weights are too large: their sum is not finite")
        if self.latency_limit_ms <= self.latency_target_ms:
            raise ConfigurationError(
                f"latency_limit_ms ({self.latency_limit_ms}) must exceed latency_target_ms "
                f"({self.latency_target_ms})"
            )
        if self.max_completion_ratio <= 0:
            raise ConfigurationError(f"max_completion_ratio must be > 0, not {self.max_completion_ratio}")

    @property
    def behaviour_total(self) -> float:
        return self.regenerated + self.edited + self.latency + self.token_efficiency

    @property
    def rating_share(self) -> float:
        """rho: the share of the score an explicit rating carries."""
        return self.rating / (self.rating + self.behaviour_total)


@dataclass(frozen=True)
class Behaviour:
    """What the score is computed from: an event's outcome and what the user did with it.

    ``rated_at`` is when ``rating`` was given (the event's finish for a rating carried by the event),
    so that the latest rating wins even when Feedback is applied out of order.
    """

    status: Status | str
    regenerated: bool
    edited: bool
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    rating: int | None
    rated_at: datetime | None = None

    @classmethod
    def of(cls, event: OnFinishEvent | EnrichedEvent) -> Behaviour:
        return cls(
            status=event.status,
            regenerated=event.regenerated,
            edited=event.edited,
            latency_ms=event.latency_ms,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            finish_reason=event.finish_reason,
            rating=event.rating,
            rated_at=event.finished_at if event.rating is not None else None,
        )


def latency_signal(latency_ms: float, weights: QualityWeights) -> float:
    """1 up to the target, 0 from the limit on, a smoothstep between (see the module docstring)."""
    if latency_ms <= weights.latency_target_ms:
        return 1.0
    # Written so that NaN, which compares false to everything, lands here and scores 0.
    if not latency_ms < weights.latency_limit_ms:
        return 0.0
    x = (latency_ms - weights.latency_target_ms) / (weights.latency_limit_ms - weights.latency_target_ms)
    return min(1.0, max(0.0, 1.0 - x * x * (3.0 - 2.0 * x)))


def token_efficiency_signal(
    prompt_tokens: int, completion_tokens: int, finish_reason: str | None, weights: QualityWeights
) -> float:
    """0 for a truncated or empty answer, else min(1, R / (C / max(P, 1)))."""
    if finish_reason is not None and finish_reason.lower() in TRUNCATION_FINISH_REASONS:
        return 0.0
    if completion_tokens <= 0:
        return 0.0
    ratio = completion_tokens / max(prompt_tokens, 1)
    return min(1.0, weights.max_completion_ratio / ratio)


def quality_score(
    *,
    status: Status | str,
    regenerated: bool,
    edited: bool,
    latency_ms: float,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reason: str | None,
    rating: int | None,
    weights: QualityWeights,
) -> float:
    """The implicit quality score in [0, 1]; the formula is in the module docstring."""
    if rating is not None and rating not in RATINGS:
        raise ValueError(f"rating must be -1, 0 or +1, not {rating}")
    # Status is a StrEnum, so this also accepts the plain string a decoded record may carry.
    if status != Status.success:
        return 0.0
    signals: list[tuple[float, float]] = [
        (weights.regenerated, 0.0 if regenerated else 1.0),
        (weights.edited, 0.0 if edited else 1.0),
        (weights.latency, latency_signal(latency_ms, weights)),
        (
            weights.token_efficiency,
            token_efficiency_signal(prompt_tokens, completion_tokens, finish_reason, weights),
        ),
    ]
    if rating is not None:
        signals.append((weights.rating, (rating + 1) / 2))
    total_weight = math.fsum(weight for weight, _ in signals)
    score = math.fsum(weight * signal for weight, signal in signals) / total_weight
    # Rounding can leave a weighted mean of values in [0, 1] a hair outside it.
    return min(1.0, max(0.0, score))


def score_behaviour(behaviour: Behaviour, weights: QualityWeights) -> float:
    """:func:`quality_score` of a :class:`Behaviour`."""
    return quality_score(
        status=behaviour.status,
        regenerated=behaviour.regenerated,
        edited=behaviour.edited,
        latency_ms=behaviour.latency_ms,
        prompt_tokens=behaviour.prompt_tokens,
        completion_tokens=behaviour.completion_tokens,
        finish_reason=behaviour.finish_reason,
        rating=behaviour.rating,
        weights=weights,
    )


def merge_feedback(behaviour: Behaviour, feedback: Feedback) -> Behaviour:
    """The behaviour once ``feedback`` is known: its flags OR-ed in, the latest rating kept.

    A Feedback without a rating leaves the rating alone; one with a rating replaces the current
    rating unless that was given later (a tie goes to the Feedback). Applying the same Feedback twice
    gives the same behaviour as applying it once.
    """
    rating, rated_at = behaviour.rating, behaviour.rated_at
    if feedback.rating is not None and (rated_at is None or feedback.at >= rated_at):
        rating, rated_at = feedback.rating, feedback.at
    return Behaviour(
        status=behaviour.status,
        regenerated=behaviour.regenerated or feedback.regenerated,
        edited=behaviour.edited or feedback.edited,
        latency_ms=behaviour.latency_ms,
        prompt_tokens=behaviour.prompt_tokens,
        completion_tokens=behaviour.completion_tokens,
        finish_reason=behaviour.finish_reason,
        rating=rating,
        rated_at=rated_at,
    )


def apply_feedback(behaviour: Behaviour, feedback: Feedback, weights: QualityWeights) -> float:
    """The score of ``behaviour`` once ``feedback`` is merged in (see :func:`merge_feedback`)."""
    return score_behaviour(merge_feedback(behaviour, feedback), weights)
