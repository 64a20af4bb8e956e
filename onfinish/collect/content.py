"""Message content as instrumentations record it, read down to its text.

Only to fingerprint it (the SDK's prompt hash and lengths) and, when content capture is on, to send
it as the event's prompt_text and completion_text. The shapes seen in the wild:
- the GenAI conventions' gen_ai.input.messages / gen_ai.output.messages: a JSON array of messages
  whose `parts` hold `{"type": "text", "content": ...}` (structured, or as a JSON string);
- the deprecated gen_ai.prompt / gen_ai.completion and OpenLLMetry's indexed
  gen_ai.prompt.N.content: a string, or OpenAI-style messages with `content`;
- the Vercel AI SDK's ai.prompt (`{"prompt": ...}` or `{"system": ..., "messages": [...]}`),
  ai.prompt.messages (messages whose `content` is a list of `{"type": "text", "text": ...}`) and
  ai.response.text (plain text).
Anything else is taken as the text it is.
"""

from __future__ import annotations

import json
from typing import Any


def _parts_text(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            out += _parts_text(item)
        return out
    if isinstance(value, dict):
        if "parts" in value:
            return _parts_text(value["parts"])
        for key in ("content", "text", "prompt"):
            if key in value:
                return _parts_text(value[key])
        if "messages" in value or "system" in value:
            return _parts_text(value.get("system") or []) + _parts_text(value.get("messages") or [])
    return []


def messages_text(value: Any) -> str:
    """The text of a recorded prompt or completion, parts joined by newlines."""
    if isinstance(value, str):
        stripped = value.lstrip()
        if not stripped.startswith(("[", "{")):
            return value
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    return "\n".join(_parts_text(value))
