"""Insights: the decisions teams instrument onFinish for, answered from the stored analytics.

Variant readouts and model-version drift (statistics over stored calls), anomalies against a
streaming baseline of the 1-minute windows, re-pricing of history with a new price catalog, and
cost budgets. The statistics here are pure functions; the queries and the alert producer sit at
the edges.
"""
