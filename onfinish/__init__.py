"""onfinish: Kafka stream processing for LLM telemetry.

This core package holds what every stage shares (settings, errors, logging), the command line and
the local stack. The stages are subpackages: ``onfinish.producers``, ``onfinish.processors``,
``onfinish.schemas`` and ``onfinish.sinks``.
"""

__version__ = "0.1.0"
