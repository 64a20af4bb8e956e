"""Stream processors: validate, enrich, redact and window onFinish events (faust-streaming).

Stages are plain functions over typed events; Faust agents only wire them to topics.
Installed with the ``processors`` extra.
"""
