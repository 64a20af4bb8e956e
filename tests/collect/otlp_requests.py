"""OTLP requests for the tests: the package's samples (onfinish/collect/samples.py)."""

from onfinish.collect.samples import genai_request, kv

__all__ = ["genai_request", "kv"]
