"""Alerting: conditions over populations, alert episodes, and their delivery through Alertmanager.

What a team is paged for. The processors record per-call and per-session breaches as facts; here
rate and percentile conditions are judged on whole minutes merged across partitions
(conditions.py), every finding of the insights worker becomes an episode with a `for` duration
and a cooldown (episodes.py), episodes travel as firing and resolved records on onfinish.alerts
(records.py) and reach people through Prometheus Alertmanager's v2 API (alertmanager.py,
notifier.py). `onfinish watch` runs it all; `onfinish alerts` lists, silences and tests.
"""
