"""Redaction: the stage after which no PII or secret leaves the processors.

Every free-text field of an event (error_message, finish_reason, error_type, error_code, prompt and
completion text, attribute values) goes through :func:`redact_text` or a :class:`PatternSet`
before the event is published; attributes outside an allow-list are dropped with
:func:`redact_attributes`, user ids are replaced by keyed pseudonyms with :func:`pseudonymise`, and
every other identifier or dimension a pattern finds PII in by the same keyed hash
(:func:`pseudonymise_identifier`). Text written percent-encoded, as in URLs, is checked decoded too.

The patterns are versioned data (``data/redaction_patterns.v2.toml``): read, validated and compiled
once at start into a :class:`PatternSet`, whose methods are then pure functions of their input.
An invalid file raises :class:`RedactionError`, so a processor never starts with a silently
weaker pattern set.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Final, Literal, Protocol, Self, TypeAlias
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from onfinish.errors import OnfinishError

PATTERNS_RESOURCE: Final = ("data", "redaction_patterns.v2.toml")
# Version 2 applies the same file format more widely than version 1 did (decision 0015): to every
# identifier and dimension as well as free text, and to percent-decoded text. A version 1 file was
# reviewed for free text only, so it is refused with what to check rather than read as version 2.
PATTERNS_FORMAT_VERSION: Final = 2
PSEUDONYM_PREFIX: Final = "u_"
# Identifiers and dimensions a pattern finds PII in: the same keyed hash as user ids, told apart by
# the prefix so that a pseudonymised feature_id does not read as a user.
IDENTIFIER_PSEUDONYM_PREFIX: Final = "p_"
# 128 bits of the HMAC: collisions stay out of reach for any realistic number of users, and the
# pseudonym still fits the 256-character identifier fields comfortably.
PSEUDONYM_HEX_CHARS: Final = 32
# The group a validator checks when a pattern has one; otherwise it checks the whole match.
VALIDATED_GROUP: Final = "value"

Finding: TypeAlias = tuple[str, str]


# Rounds of redaction until a fixpoint; two suffice for every overlap the tests found.
_MAX_ROUNDS = 4
# Percent-decoding rounds: a URL inside another URL's query is encoded twice ("%2540" for "@"), and
# two more levels are allowed for wrappers around that (a redirect inside a logged URL). Bounded
# because each round is a full pass of the patterns, and "%25" repeated n times would otherwise take
# n of them; PII encoded five times or more is not found.
_MAX_DECODES = 4
_PERCENT_ESCAPE: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_CACHED_TEXT_CHARS = 256  # results of texts up to this long are remembered...
_CACHE_ENTRIES = 4096  # ...this many of them


class RedactionError(OnfinishError):
    """The redaction patterns cannot be read or are invalid."""


# Python's `re` matched possessive quantifiers wrongly before 3.11.5 (CPython gh-100061, gh-106052):
# on 3.11.2 the IBAN pattern finds nothing in "DE89 3704 0044 0532 0130 00", which then leaves the
# processors unmasked. The patterns rely on possessive quantifiers for speed, so such an engine is
# refused rather than used.
RE_ENGINE_FIXED_IN: Final = (3, 11, 5)


def check_re_engine(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> None:
    """Raise RedactionError when this Python's `re` is one whose possessive quantifiers misbehave."""
    if version < RE_ENGINE_FIXED_IN:
        found, needed = (".".join(map(str, v)) for v in (version, RE_ENGINE_FIXED_IN))
        raise RedactionError(
            f"Python {found}'s re module mismatches possessive quantifiers, which the redaction "
            f"patterns use: PII would get through. Use Python {needed} or newer."
        )


# --- Validators: checks a regex cannot express ---------------------------------------------------


def luhn_valid(candidate: str) -> bool:
    """Whether the digits of ``candidate`` (separators ignored) pass the Luhn check of card numbers."""
    digits = [int(character) for character in candidate if character.isdecimal()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Whether ``candidate`` (spaces ignored) has valid ISO 13616 check digits (mod 97 equals 1)."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isascii() or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    # int(character, 36) maps A..Z to 10..35, the letter values of ISO 13616.
    return int("".join(str(int(character, 36)) for character in rearranged)) % 97 == 1


def ipv4_octets_valid(candidate: str) -> bool:
    """Whether ``candidate`` is four dot-separated decimal octets, each 0..255."""
    octets = candidate.split(".")
    return len(octets) == 4 and all(octet.isdecimal() and int(octet) <= 255 for octet in octets)


ValidatorName: TypeAlias = Literal["luhn", "iban_mod97", "ipv4_octets"]
FlagName: TypeAlias = Literal["IGNORECASE", "MULTILINE", "DOTALL"]

_VALIDATORS: Final[Mapping[str, Callable[[str], bool]]] = {
    "luhn": luhn_valid,
    "iban_mod97": iban_valid,
    "ipv4_octets": ipv4_octets_valid,
}
_FLAGS: Final[Mapping[str, re.RegexFlag]] = {
    "IGNORECASE": re.IGNORECASE,
    "MULTILINE": re.MULTILINE,
    "DOTALL": re.DOTALL,
}
_GROUP_REFERENCE: Final = re.compile(r"\\g<([A-Za-z_][A-Za-z0-9_]*)>")


# --- The file format, validated with pydantic ---------------------------------------------------


class _PatternEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    regex: str = Field(min_length=1)
    replacement: str
    validator: ValidatorName | None = None
    flags: tuple[FlagName, ...] = ()
    requires: tuple[str, ...] | None = Field(default=None, min_length=1)
    description: str = Field(min_length=1)

    @field_validator("replacement")
    @classmethod
    def _only_group_references(cls, replacement: str) -> str:
        # re's own template syntax (\1, \n, ...) is not allowed: a replacement is literal text plus
        # named groups, which keeps it readable and lets the engine expand it without re internals.
        if "\\" in _GROUP_REFERENCE.sub("", replacement):
            raise ValueError(f"replacement {replacement!r} may contain a backslash only as \\g<group name>")
        return replacement

    @field_validator("requires")
    @classmethod
    def _no_empty_requirement(cls, requires: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if requires is not None and "" in requires:
            raise ValueError("an empty string in requires would match every text")
        return requires


class _PatternsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    pattern: list[_PatternEntry] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _supported_version(cls, version: int) -> int:
        if version == 1:
            raise ValueError(
                "patterns version 1 were written for free text only; this onfinish also applies them "
                "to identifiers and dimensions (a match there pseudonymises the whole value) and to "
                "percent-decoded text. Check that no pattern matches your ordinary ids, then set "
                "version = 2"
            )
        if version != PATTERNS_FORMAT_VERSION:
            raise ValueError(
                f"unsupported patterns format version {version}; this onfinish reads version "
                f"{PATTERNS_FORMAT_VERSION}"
            )
        return version

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for entry in self.pattern:
            if entry.name in seen:
                raise ValueError(f"duplicate pattern name {entry.name!r}")
            seen.add(entry.name)
        return self


def _validation_message(error: ValidationError, raw: Any) -> str:
    entries = raw.get("pattern") if isinstance(raw, dict) else None
    problems = []
    for detail in error.errors():
        parts = []
        for part in detail["loc"]:
            if isinstance(part, int):
                name = None
                if isinstance(entries, list) and part < len(entries) and isinstance(entries[part], dict):
                    name = entries[part].get("name")
                parts.append(f"[{part}]" + (f" ({name!r})" if isinstance(name, str) else ""))
            else:
                parts.append(f".{part}" if parts else str(part))
        where = "".join(parts)
        context = detail.get("ctx") or {}
        # A ValueError raised by our own validators reads better without pydantic's prefix.
        message = str(context["error"]) if detail["type"] == "value_error" else detail["msg"]
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


# --- Compiled patterns and the engine -----------------------------------------------------------


class _Gate:
    """A cheap necessary condition: a match can only exist if the text contains one of ``needles``."""

    __slots__ = ("_needle", "_regex", "folded", "needles")

    def __init__(self, needles: tuple[str, ...], folded: bool) -> None:
        self.folded = folded
        # Case-folded needles are searched in the lowered text: an IGNORECASE alternation is slow in
        # re, a plain one of literals is scanned in C, and one needle is a substring test.
        wanted = tuple(needle.lower() for needle in needles) if folded else needles
        self.needles = wanted
        self._needle = wanted[0] if len(wanted) == 1 else None
        self._regex = re.compile("|".join(map(re.escape, wanted)))

    def admits(self, text: str, lowered: str) -> bool:
        haystack = lowered if self.folded else text
        if self._needle is not None:
            return self._needle in haystack
        return self._regex.search(haystack) is not None


@dataclass(frozen=True, slots=True)
class _CompiledPattern:
    name: str
    regex: re.Pattern[str]
    # Literal text, or the name of a group to insert, in order; a plain str when there is no group.
    replacement: str | tuple[tuple[bool, str], ...]
    validate: Callable[[str], bool] | None
    validated_group: str | int
    gate: int | None
    flags: tuple[str, ...] = ()
    validator_name: str | None = None

    def masked(self, match: re.Match[str]) -> str | None:
        """The replacement for ``match``, or None when its validator refuses the candidate."""
        if self.validate is not None and not self.validate(match[self.validated_group]):
            return None
        if isinstance(self.replacement, str):
            return self.replacement
        return "".join((match[text] or "") if is_group else text for is_group, text in self.replacement)

    def substitute(self, match: re.Match[str]) -> str:
        masked = self.masked(match)
        return match[0] if masked is None else masked


def _compile(entry: _PatternEntry, gate: int | None) -> _CompiledPattern:
    flags = re.RegexFlag(0)
    for flag in entry.flags:
        flags |= _FLAGS[flag]
    try:
        regex = re.compile(entry.regex, flags)
    except re.error as error:
        raise RedactionError(f"pattern {entry.name!r} has an invalid regex: {error}") from error
    if regex.match(""):
        raise RedactionError(f"pattern {entry.name!r} matches the empty string and would mask nothing")

    parts: list[tuple[bool, str]] = []
    position = 0
    for reference in _GROUP_REFERENCE.finditer(entry.replacement):
        group = reference[1]
        if group not in regex.groupindex:
            raise RedactionError(
                f"pattern {entry.name!r}: replacement refers to group {group!r}, which its regex lacks"
            )
        if reference.start() > position:
            parts.append((False, entry.replacement[position : reference.start()]))
        parts.append((True, group))
        position = reference.end()
    if position < len(entry.replacement):
        parts.append((False, entry.replacement[position:]))
    replacement = entry.replacement if all(not is_group for is_group, _ in parts) else tuple(parts)

    return _CompiledPattern(
        name=entry.name,
        regex=regex,
        replacement=replacement,
        validate=_VALIDATORS[entry.validator] if entry.validator is not None else None,
        validated_group=VALIDATED_GROUP if VALIDATED_GROUP in regex.groupindex else 0,
        gate=gate,
        flags=entry.flags,
        validator_name=entry.validator,
    )


class PatternSet:
    """A validated, compiled set of redaction patterns, applied in file order.

    Build it with :meth:`load` (a file, by default the one shipped with onfinish) or
    :meth:`from_toml`. It does not change after construction, so one instance can be shared by
    every agent and thread of a processor.
    """

    __slots__ = ("_cache", "_gates", "_names", "_patterns", "_version")

    def __init__(self, version: int, entries: list[_PatternEntry]) -> None:
        conditions: dict[tuple[tuple[str, ...], bool], int] = {}
        patterns = []
        for entry in entries:
            gate_index = None
            if entry.requires is not None:
                # Patterns that share a condition (most numeric ones need a digit) share its check.
                condition = (tuple(sorted(set(entry.requires))), "IGNORECASE" in entry.flags)
                gate_index = conditions.setdefault(condition, len(conditions))
            patterns.append(_compile(entry, gate_index))
        self._version = version
        self._names = tuple(entry.name for entry in entries)
        self._patterns = tuple(patterns)
        self._gates = tuple(_Gate(needles, folded) for needles, folded in conditions)
        # Free text repeats (error codes and messages, finish reasons): results of short texts are
        # kept, a bounded number of them, and the whole cache dropped when full. Never logged.
        self._cache: dict[str, str] = {}

    @classmethod
    def load(cls, path: Path | None = None) -> Self:
        """Read, validate and compile a patterns file; without a path, the one shipped with onfinish."""
        try:
            if path is None:
                resource = files("onfinish.processors").joinpath(*PATTERNS_RESOURCE)
                text = resource.read_text(encoding="utf-8")
                source = f"packaged {'/'.join(PATTERNS_RESOURCE)}"
            else:
                text = path.read_text(encoding="utf-8")
                source = str(path)
        except (OSError, UnicodeDecodeError) as error:
            where = path or "/".join(PATTERNS_RESOURCE)
            raise RedactionError(f"cannot read the redaction patterns {where}: {error}") from error
        return cls.from_toml(text, source=source)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<text>") -> Self:
        """Parse, validate and compile patterns from TOML text; ``source`` names it in errors."""
        check_re_engine()
        try:
            raw: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RedactionError(f"redaction patterns {source} are not valid TOML: {error}") from error
        try:
            document = _PatternsFile.model_validate(raw)
        except ValidationError as error:
            message = _validation_message(error, raw)
            raise RedactionError(f"redaction patterns {source} are invalid: {message}") from error
        try:
            return cls(document.version, document.pattern)
        except RedactionError as error:
            raise RedactionError(f"redaction patterns {source} are invalid: {error}") from error

    @property
    def version(self) -> int:
        return self._version

    @property
    def names(self) -> tuple[str, ...]:
        """The pattern names, in the order they are applied."""
        return self._names

    def definitions(self) -> dict[str, Any]:
        """The compiled set as plain data, for the native engine (processors/engines.py): per pattern
        its name, regex, flags, replacement parts (is a group, text), validator, validated group and
        gate; the gates' needles (lowered when folded); and the version."""
        patterns = []
        for pattern in self._patterns:
            replacement = pattern.replacement
            parts = [(False, replacement)] if isinstance(replacement, str) else list(replacement)
            group = pattern.validated_group
            patterns.append(
                (
                    pattern.name,
                    pattern.regex.pattern,
                    list(pattern.flags),
                    parts,
                    pattern.validator_name,
                    group if isinstance(group, str) else None,
                    pattern.gate,
                )
            )
        return {
            "patterns": patterns,
            "gates": [(list(gate.needles), gate.folded) for gate in self._gates],
            "redaction_version": self._version,
        }

    def redact(self, text: str) -> str:
        """``text`` with every PII or secret the patterns find replaced by its placeholder.

        Applied until nothing changes (at most a few rounds): a pattern may fail on a candidate that
        swallowed a neighbour (an IBAN followed by a phone number) and match once the neighbour is
        masked. Clean text takes one round, so the common case costs nothing more.

        A text with percent escapes (``alice%40example.com`` in a URL) is also checked decoded:
        when decoding reveals PII, the decoded text is returned, masked; otherwise the text keeps
        its escapes. A text without "%" costs one substring test more.
        """
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        redacted = self._decoded(text, None)
        if len(text) <= _CACHED_TEXT_CHARS:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[text] = redacted
        return redacted

    def findings(self, text: str) -> list[Finding]:
        """(pattern name, matched text) for every span :meth:`redact` masks, in the order masked;
        spans found in the percent-decoded text come after those of the text as written."""
        found: list[Finding] = []
        self._decoded(text, found)
        return found

    def _decoded(self, text: str, found: list[Finding] | None) -> str:
        # The text as written is masked first: decoding can break a match (the password "p%40ss" of
        # a URL), so neither form alone would do. Then each decoding of what is left: the result is
        # the text decoded down to the deepest level that revealed PII, masked; or, when none did,
        # the text as written, masked, escapes kept.
        if found is not None:
            self._apply(text, found)
        result = masked = self._fixpoint(text)
        for _ in range(_MAX_DECODES):
            if not _has_escape(masked):
                break
            decoded = percent_decoded(masked)
            if found is not None:
                self._apply(decoded, found)
            masked = self._fixpoint(decoded)
            if masked != decoded:
                result = masked
        return result

    def _fixpoint(self, text: str) -> str:
        redacted = self._apply(text, None)
        rounds = 1
        while redacted != text and rounds < _MAX_ROUNDS:
            text, redacted = redacted, self._apply(redacted, None)
            rounds += 1
        return redacted

    def _apply(self, text: str, found: list[Finding] | None) -> str:
        # Gate results hold for the text they were computed on; a substitution resets them.
        admitted: list[bool | None] = [None] * len(self._gates)
        lowered: str | None = None
        for pattern in self._patterns:
            if pattern.gate is not None:
                verdict = admitted[pattern.gate]
                if verdict is None:
                    gate = self._gates[pattern.gate]
                    if lowered is None and gate.folded:
                        lowered = text.lower()
                    verdict = admitted[pattern.gate] = gate.admits(text, lowered or text)
                if not verdict:
                    continue
            if found is None:
                redacted = pattern.regex.sub(pattern.substitute, text)
            else:
                redacted = pattern.regex.sub(_recording(pattern, found), text)
            if redacted != text:
                text = redacted
                admitted = [None] * len(self._gates)
                lowered = None
        return text


def _has_escape(text: str) -> bool:
    return "%" in text and _PERCENT_ESCAPE.search(text) is not None


def percent_decoded(text: str) -> str:
    """``text`` with its %XX escapes decoded as UTF-8 (invalid sequences become U+FFFD), as
    :func:`urllib.parse.unquote` does; "%" not followed by two hex digits stays as it is."""
    return unquote(text, encoding="utf-8", errors="replace")


def _recording(pattern: _CompiledPattern, found: list[Finding]) -> Callable[[re.Match[str]], str]:
    def substitute(match: re.Match[str]) -> str:
        masked = pattern.masked(match)
        if masked is None:
            return match[0]
        found.append((pattern.name, match[0]))
        return masked

    return substitute


# --- The stage's functions ----------------------------------------------------------------------


@cache
def default_patterns() -> PatternSet:
    """The patterns shipped with onfinish, loaded and compiled on first use."""
    return PatternSet.load()


def redact_text(text: str) -> str:
    """``text`` with PII and secrets masked by the patterns shipped with onfinish."""
    return default_patterns().redact(text)


class TextRedactor(Protocol):
    """What redacts a text: a PatternSet, or its native counterpart (processors/engines.py)."""

    def redact(self, text: str) -> str: ...


def redact_attributes(
    attributes: Mapping[str, str], allow_list: frozenset[str], patterns: TextRedactor | None = None
) -> dict[str, str]:
    """The attributes whose keys are allow-listed, their values redacted; every other key is dropped.

    Dropping unknown keys is the default because a key nobody reviewed may carry anything, and a
    pattern set only catches what it knows the shape of.
    """
    pattern_set = default_patterns() if patterns is None else patterns
    return {key: pattern_set.redact(value) for key, value in attributes.items() if key in allow_list}


def pseudonymise(user_id: str, key: bytes) -> str:
    """A stable pseudonym for ``user_id``: HMAC-SHA256 under ``key``, hex, prefixed and truncated.

    Keyed rather than a plain hash because user ids are guessable ("user-1234"): without the key a
    pseudonym cannot be reversed by hashing candidates. The same key gives the same pseudonym, so
    sessions and per-user aggregates still join; rotating the key unlinks everything before it.
    """
    if not key:
        raise ValueError("the pseudonymisation key must not be empty")
    return _pseudonym(user_id, key, PSEUDONYM_PREFIX)


def pseudonymise_identifier(identifier: str, key: bytes) -> str:
    """:func:`pseudonymise` for an identifier or dimension that is not a user id ("p_" prefix)."""
    if not key:
        raise ValueError("the pseudonymisation key must not be empty")
    return _pseudonym(identifier, key, IDENTIFIER_PSEUDONYM_PREFIX)


def clean_identifier(identifier: str, patterns: TextRedactor, key: bytes) -> str:
    """``identifier`` as it is when no pattern finds PII in it (percent-decoded included, and with
    "-" and "_" read as spaces), else its keyed pseudonym.

    Not masked in place as free text is: an identifier is compared, grouped and joined on, and a
    placeholder would merge every session whose id held an e-mail address into one. The keyed
    hash keeps one session one session, and the same value in an event and in its later Feedback
    still meets.
    """
    if is_opaque_id(identifier):
        return identifier
    if patterns.redact(identifier) == identifier:
        spaced = identifier.translate(_ID_SEPARATORS)
        if spaced == identifier or patterns.redact(spaced) == spaced:
            return identifier
    return pseudonymise_identifier(identifier, key)


_HEX: Final = frozenset("0123456789abcdefABCDEF")
_LOWER_HEX: Final = frozenset("0123456789abcdef")
# Hex digests as ids: MD5, SHA-1, SHA-256 in lowercase (prompt_hash is a SHA-256).
_DIGEST_LENGTHS: Final = frozenset({32, 40, 64})


def is_opaque_id(identifier: str) -> bool:
    """Whether ``identifier`` has the shape of a machine-made id that holds no person's data: a
    UUID in its 8-4-4-4-12 form, or a lowercase hex digest. Such ids skip the pattern passes: they
    are most ids (request ids are new on every event, so no cache helps them), and checking them
    cost about three pattern passes per event, 16% of the Python engine's time and half the native
    one's. An e-mail address, a phone number or a card number cannot take either shape.
    The native core's `opaque_id` is the same test (processors/native/src/lib.rs)."""
    length = len(identifier)
    if length == 36:
        return (
            identifier[8] == identifier[13] == identifier[18] == identifier[23] == "-"
            and len(compact := identifier.replace("-", "")) == 32
            and _HEX.issuperset(compact)
        )
    return length in _DIGEST_LENGTHS and _LOWER_HEX.issuperset(identifier)


# The patterns are written for free text, where a number glued to a word by "-" or "_" is part of
# an id, not a card ("order-4111111111111111" in a log line); in an identifier that is exactly how
# PII is glued on ("sess-4111111111111111", "alice@example.com-3"), so an identifier is checked
# a second time with those two read as spaces. No ordinary id of the precision tests or of 78,000
# loadgen values is matched so; a numeric id of 13-19 digits that happens to be Luhn-valid is.
_ID_SEPARATORS: Final = str.maketrans("-_", "  ")


# A user makes many calls: the HMAC was 3% of a processor's time, so pseudonyms are cached, per key
# and prefix, up to PSEUDONYM_CACHE_ENTRIES values, then cleared (as the native engine's cache).
# A plain dict rather than functools.lru_cache: an lru_cache entry (its linked node and its key
# tuple) cost about 170 bytes more, which was 110 of the 1,131 bytes the state benchmark counted
# per live session; a miss after a clear costs one HMAC, about 1.5 µs.
PSEUDONYM_CACHE_ENTRIES: Final = 65_536
_PSEUDONYMS: dict[tuple[bytes, str], dict[str, str]] = {}


def _pseudonym(value: str, key: bytes, prefix: str) -> str:
    known = _PSEUDONYMS.get((key, prefix))
    if known is None:
        known = _PSEUDONYMS[(key, prefix)] = {}
    pseudonym = known.get(value)
    if pseudonym is None:
        digest = hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        pseudonym = prefix + digest[:PSEUDONYM_HEX_CHARS]
        if len(known) >= PSEUDONYM_CACHE_ENTRIES:
            known.clear()
        known[value] = pseudonym
    return pseudonym
