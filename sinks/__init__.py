"""Sinks: workers that write raw events and rolled-up tables into ClickHouse, idempotently.

Installed with the ``sinks`` extra; reaches ClickHouse only through clickhouse-connect
(``chdb:///<dir>`` embedded, or ``http(s)://`` for a server).
"""
