"""Anomalies: the streaming baseline on synthetic series, episodes, re-feeding and the rule file."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from onfinish.errors import ConfigurationError
from onfinish.insights.anomalies import (
    Anomaly,
    AnomalyDetector,
    AnomalyRule,
    AnomalyRuleBook,
    MinuteMetrics,
    load_anomaly_rules,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DEFAULTS = load_anomaly_rules()
# One rule whose spread floors are negligible, so the tests exercise the estimator itself.
LATENCY = AnomalyRuleBook(
    version=1,
    rule=[
        AnomalyRule(
            name="latency_jump",
            metric="latency_p95_ms",
            min_spread_abs=1.0,
            min_spread_rel=0.0,
            message="p95 {observed:.0f} ms vs {baseline:.0f} ± {spread:.0f} ms",
        )
    ],
)


def minutes(
    latencies: Iterable[float | None], *, calls: Callable[[int], int] = lambda _: 100, feature: str = "chat"
) -> list[MinuteMetrics]:
    return [
        MinuteMetrics(
            provider="openai",
            model_id="gpt-4o",
            feature_id=feature,
            minute=T0 + timedelta(minutes=index),
            calls=calls(index),
            errors=0,
            latency_p95_ms=latency,
            ttft_p95_ms=None,
            cost_usd=0.5,
        )
        for index, latency in enumerate(latencies)
    ]


def quiet(seed: int, count: int, level: float = 800.0, noise: float = 40.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(level, noise) for _ in range(count)]


def feed(detector: AnomalyDetector, series: Iterable[MinuteMetrics]) -> list[Anomaly]:
    return [anomaly for minute in series for anomaly in detector.observe(minute)]


def with_spike(seed: int = 7) -> list[float]:
    values = quiet(seed, 120)
    values[90:96] = [1600.0] * 6
    return values


@pytest.mark.parametrize("book", [LATENCY, DEFAULTS], ids=["estimator", "default-rules"])
def test_a_spike_is_one_anomaly_at_its_first_minute_against_the_old_baseline(book: AnomalyRuleBook):
    (anomaly,) = feed(AnomalyDetector(book), minutes(with_spike()))
    assert anomaly.minute == T0 + timedelta(minutes=90)
    assert anomaly.observed == pytest.approx(1600.0)
    assert anomaly.baseline == pytest.approx(800.0, abs=30.0)
    assert 20.0 < anomaly.spread < 70.0
    assert anomaly.threshold == pytest.approx(anomaly.baseline + 4.0 * anomaly.spread)
    assert anomaly.metric == "latency_p95_ms" and anomaly.feature_id == "chat"
    assert len(anomaly.alert_id) == 32 and int(anomaly.alert_id, 16) >= 0


def test_the_message_is_the_rule_template_filled_in():
    (anomaly,) = feed(AnomalyDetector(LATENCY), minutes(with_spike()))
    assert anomaly.message == f"p95 1600 ms vs {anomaly.baseline:.0f} ± {anomaly.spread:.0f} ms"
    assert anomaly.severity == "warning" and anomaly.rule == "latency_jump"


def test_a_new_episode_after_a_normal_minute_fires_again():
    values = with_spike()
    values[110:113] = [1700.0] * 3
    fired = feed(AnomalyDetector(LATENCY), minutes(values))
    assert [a.minute for a in fired] == [T0 + timedelta(minutes=90), T0 + timedelta(minutes=110)]
    assert fired[0].alert_id != fired[1].alert_id


def test_no_anomaly_during_warm_up_or_on_a_quiet_series():
    values = quiet(3, 120)
    values[10:14] = [5000.0] * 4  # inside the 30-minute warm-up
    assert feed(AnomalyDetector(LATENCY), minutes(values[:30])) == []
    assert feed(AnomalyDetector(LATENCY), minutes(quiet(3, 240))) == []


def test_the_false_alarm_rate_on_quiet_series_is_small():
    seeds, length = 50, 240
    watched = seeds * (length - 30)  # minutes past the warm-up
    estimator = sum(
        len(feed(AnomalyDetector(LATENCY), minutes(quiet(seed, length)))) for seed in range(seeds)
    )
    default = sum(len(feed(AnomalyDetector(DEFAULTS), minutes(quiet(seed, length)))) for seed in range(seeds))
    print(
        f"false alarms over {seeds} quiet series of {length} minutes ({watched} watched minutes): "
        f"estimator alone {estimator} ({estimator / watched:.1e}/minute), default rules {default}"
    )
    # Gaussian 4 sigma alone would be 3e-5 a minute; the spread's own estimation noise (about 20
    # minutes' worth at alpha 0.1) fattens the tail to a few 1e-4. The default 5% floor removes it.
    assert estimator / watched <= 1e-3
    assert default == 0


def test_a_slow_drift_is_followed_not_alerted():
    rng = random.Random(11)
    values = [800.0 * 1.002**index + rng.gauss(0.0, 40.0) for index in range(300)]
    assert values[-1] > 1300.0  # the level has risen by more than 60%
    assert feed(AnomalyDetector(LATENCY), minutes(values)) == []


def test_a_below_rule_fires_on_a_drop_only():
    rule = LATENCY.rule[0].model_copy(update={"name": "latency_drop", "direction": "below"})
    book = AnomalyRuleBook(version=1, rule=[rule])
    values = quiet(5, 120)
    values[60:63] = [1600.0] * 3  # a rise: not this rule's business
    values[90:93] = [200.0] * 3
    (anomaly,) = feed(AnomalyDetector(book), minutes(values))
    assert anomaly.minute == T0 + timedelta(minutes=90)
    assert anomaly.threshold == pytest.approx(anomaly.baseline - 4.0 * anomaly.spread)
    assert anomaly.observed < anomaly.threshold


def test_minutes_with_few_calls_neither_update_nor_alert():
    values = with_spike()
    spike_has_few_calls = minutes(values, calls=lambda index: 5 if 90 <= index < 96 else 100)
    assert feed(AnomalyDetector(LATENCY), spike_has_few_calls) == []
    # Nor do they count towards the warm-up: 40 minutes, only the last 10 with enough calls.
    early = quiet(9, 40)
    early[38] = 3000.0
    assert feed(AnomalyDetector(LATENCY), minutes(early, calls=lambda index: 3 if index < 30 else 100)) == []


def test_missing_metric_values_are_not_observed():
    values: list[float | None] = [*with_spike()]
    values[90:96] = [None] * 6
    assert feed(AnomalyDetector(LATENCY), minutes(values)) == []


def test_re_feeding_the_same_minutes_is_ignored_and_rebuilding_gives_the_same_ids():
    series = minutes(with_spike())
    detector = AnomalyDetector(LATENCY)
    first = feed(detector, series)
    assert feed(detector, series) == []
    assert feed(detector, series[:95]) == []
    rebuilt = feed(AnomalyDetector(LATENCY), series)
    assert [a.alert_id for a in rebuilt] == [a.alert_id for a in first]


def test_series_are_independent():
    detector = AnomalyDetector(LATENCY)
    interleaved = [
        m
        for pair in zip(minutes(with_spike()), minutes(quiet(2, 120), feature="search"), strict=True)
        for m in pair
    ]
    (anomaly,) = feed(detector, interleaved)
    assert anomaly.feature_id == "chat"


def test_error_rate_rule_of_the_defaults():
    rng = random.Random(4)
    series = [
        MinuteMetrics(
            provider="anthropic",
            model_id="claude",
            feature_id="",
            minute=T0 + timedelta(minutes=index),
            calls=200,
            errors=(60 if index == 80 else sum(rng.random() < 0.01 for _ in range(200))),
            latency_p95_ms=None,
            ttft_p95_ms=None,
            cost_usd=0.0,
        )
        for index in range(100)
    ]
    (anomaly,) = feed(AnomalyDetector(DEFAULTS), series)
    assert (anomaly.rule, anomaly.severity, anomaly.observed) == ("error_rate_high", "critical", 0.3)
    assert anomaly.message.startswith("error rate 30.0%, baseline ")


def test_minutes_must_be_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        MinuteMetrics("p", "m", "f", datetime(2026, 1, 1), 10, 0, 1.0, None, 0.0)


def test_the_packaged_rules_load():
    assert DEFAULTS.version == 1
    assert {rule.metric for rule in DEFAULTS.rule} == {
        "error_rate",
        "latency_p95_ms",
        "ttft_p95_ms",
        "cost_per_minute_usd",
    }
    assert all(rule.direction == "above" for rule in DEFAULTS.rule)


RULE = 'name = "x"\nmetric = "latency_p95_ms"\nmin_spread_abs = 1.0\nmessage = "{observed}"\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (RULE.replace("latency_p95_ms", "latency_p99_ms"), r"rule\.0\.metric: Input should be"),
        (
            RULE.replace('"{observed}"', '"{observed} vs {threshhold}"'),
            r"unknown placeholders \['threshhold'\]",
        ),
        (RULE.replace('"{observed}"', '"{observed:d}"'), "does not format numbers"),
        (RULE.replace('"{observed}"', '"{observed"'), "malformed"),
        (RULE + "alpha = 0.0\n", r"rule\.0\.alpha: Input should be greater than 0"),
        (RULE + "alpha = 1.5\n", r"rule\.0\.alpha: Input should be less than or equal to 1"),
        (RULE + "direction = 'sideways'\n", r"rule\.0\.direction"),
        (RULE + "thresold_spreads = 4\n", r"rule\.0\.thresold_spreads: Extra inputs are not permitted"),
        (RULE.replace("x", "Bad Name"), r"rule\.0\.name"),
        (RULE + "[[rule]]\n" + RULE, r"rule names must be unique, repeated: \['x'\]"),
    ],
)
def test_invalid_rule_files_are_refused_naming_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "rules.toml"
    path.write_text("version = 1\n[[rule]]\n" + text)
    with pytest.raises(ConfigurationError, match=problem):
        load_anomaly_rules(path)


def test_unreadable_and_future_rule_files_are_refused(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_anomaly_rules(tmp_path / "missing.toml")
    path = tmp_path / "rules.toml"
    path.write_text("version = 2\n[[rule]]\n" + RULE)
    with pytest.raises(ConfigurationError, match="version"):
        load_anomaly_rules(path)
