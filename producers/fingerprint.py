"""Content fingerprints: a prompt's hash and lengths, without the prompt leaving the service.

The hash groups identical prompts across calls. Obvious personal data (e-mail addresses, phone and
card numbers, long digit runs, IP addresses, secrets after 'Bearer' or 'sk-') is masked before
hashing, so two prompts that differ only in such data hash alike and the hash cannot be used to
confirm a guess of it.
"""

from __future__ import annotations

import hashlib
import re

_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), "<bearer>"),
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}\b"), "<key>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), "<ip>"),
    (re.compile(r"\+?\d[\d ()./-]{7,}\d"), "<number>"),
)
_SPACE = re.compile(r"\s+")


def mask(text: str) -> str:
    """The text with obvious personal data replaced by placeholders, whitespace folded."""
    for pattern, placeholder in _MASKS:
        text = pattern.sub(placeholder, text)
    return _SPACE.sub(" ", text).strip()


def prompt_hash(prompt: str) -> str:
    """SHA-256 (hex) of the masked prompt."""
    return hashlib.sha256(mask(prompt).encode()).hexdigest()


def fingerprint(prompt: str, completion: str = "") -> dict[str, object]:
    """The OnFinishEvent fields that describe content without carrying it."""
    return {
        "prompt_hash": prompt_hash(prompt),
        "prompt_chars": len(prompt),
        "completion_chars": len(completion),
    }
