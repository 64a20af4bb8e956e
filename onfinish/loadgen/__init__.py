"""Synthetic LLM traffic for the demo, the tests and the benchmarks: `onfinish loadgen`.

traffic.py is a seeded, pure model of what a fleet of services emits; load.py sends it through the
SDK at a steady rate, exactly as a host service's hook would. It is installed with the cli and dev
extras, never with the SDK: a service that embeds `onfinish.producers` carries none of it.

May import: the core, the schemas and the SDK (onfinish.producers).
"""
