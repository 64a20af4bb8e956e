"""`onfinish demo`: the whole pipeline on this machine, as a newcomer meets it.

local_pipeline.py starts a sink worker and processor workers as child processes on the local stack,
sends loadgen traffic and waits until ClickHouse holds everything sent; the integration tests and the
benchmarks drive the same class. cli.py prints the report and the dashboard's address.

May import: every other room and stage (it is the outermost application).
"""
