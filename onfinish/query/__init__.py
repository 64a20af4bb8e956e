"""The read-only SQL endpoint and the live dashboard: analysts' and the CLI's way into ClickHouse.

In embedded mode ClickHouse is chDB, inside the sink worker's process, and chDB lets one process own
a data directory. Everyone else (the CLI, the dashboard, analysts' scripts) therefore queries
through an HTTP endpoint that the owner serves from its own clickhouse-connect handle: `onfinish
sink` starts `server.QueryServer` beside the write path; `client.QueryClient` (standard library
alone) and `client.querier` reach it, or a ClickHouse server directly.

Only reads are served, and three independent checks make sure of it:

1. `guard.check_read_only` tokenises the SQL the way ClickHouse's lexer does and accepts one
   SELECT / WITH / SHOW / DESCRIBE / EXPLAIN / EXISTS statement, nothing that writes or reaches
   outside the database.
2. Every accepted query runs with `readonly=1` in its own SETTINGS clause, so the engine refuses
   writes, DDL and setting changes even if the parser missed something.
3. The statement must be one clickhouse-connect sends down its query path (server.py says why).

The dashboard (dashboard.py, its page in static/) is a set of named queries down the same path, so
it can read nothing that `/query` would refuse.

May import: the core, the sinks' settings and ClickHouse client, the insights (the dashboard's
readouts). Imported by: the command line, the insights and inspection rooms, the demo.
"""
