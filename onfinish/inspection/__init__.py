"""Looking inside a running pipeline: `onfinish tail` (topics.py), `onfinish dlq` (deadletters.py) and
`onfinish status` (status.py); their commands are in cli.py.

May import: the core, the schemas (the wire module to decode values), the stages' settings (to find
their ports and groups), the query room (dead letters are read from ClickHouse) and the local stack
(to name its components). Nothing here runs in a worker.
"""
