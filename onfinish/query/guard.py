"""The read-only guard: one SQL statement that only reads, or `ReadOnlyRefused` with the reason.

The first of the endpoint's three checks (see the package's docstring): `check_read_only` tokenises
the SQL the way ClickHouse's lexer does and accepts one SELECT / WITH / SHOW / DESCRIBE / EXPLAIN /
EXISTS statement without `INTO OUTFILE`, table functions that reach outside the database, or a
`SETTINGS` clause that touches `readonly`. It is pure: no I/O, no ClickHouse.
"""

from __future__ import annotations

from dataclasses import dataclass

from onfinish.errors import OnfinishError


class ReadOnlyRefused(OnfinishError):
    """A query was refused because it is not a single read-only statement."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --- The read-only check ---------------------------------------------------------------------------
#
# A regular expression over the raw text cannot tell `SELECT ';'` from `SELECT 1; DROP TABLE t`, nor
# `file(` in code from `file(` in a string, so the check tokenises first. The tokeniser follows
# ClickHouse's own (src/Parsers/Lexer.cpp) wherever a difference could hide code inside what we
# take for a string or a comment: quotes with backslash and doubled-quote escapes, `--`, `//`,
# `# ` and nested `/* */` comments, `$tag$...$tag$` heredocs, and numbers whose exponent swallows
# a sign (`1e--1` is `1e-` then `-1`, not a comment). Anything it cannot close is refused.

_WORD = "word"
_QUOTED_IDENTIFIER = "quoted identifier"
_STRING = "string"
_NUMBER = "number"
_PUNCTUATION = "punctuation"

_DIGITS = frozenset("0123456789")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_ASCII_WHITESPACE = frozenset(" \t\n\r\f\v")
# Single-character tokens; operators such as `!=` or `->` are two of them, which loses nothing here.
_PUNCTUATION_CHARS = frozenset("()[]{},;.+-*/%=!<>?:|@^&~")

_ALLOWED_FIRST_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
_EXPLAIN_KINDS = frozenset({"AST", "SYNTAX", "PLAN", "PIPELINE", "ESTIMATE"})
_EXPLAINABLE_FIRST_KEYWORDS = frozenset({"SELECT", "WITH"})

# Functions (table or scalar) that read or write outside the database, run programs, or reach other
# servers, compared in lower case whether spelled bare or as a quoted identifier: by name, and by
# prefix for the families that keep growing (icebergS3Cluster, deltaLakeLocal, paimonS3, ...); no
# function that stays inside the database starts with one of those prefixes.
_OUTSIDE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "file", "fileCluster", "input", "url", "urlCluster", "gcs", "oss", "cosn", "cluster",
        "clusterAllReplicas", "mysql", "postgresql", "mongodb", "redis", "sqlite", "odbc", "jdbc",
        "executable", "executablePool", "python", "arrowFlight", "ytsaurus", "catboostEvaluate",
    )
)  # fmt: skip
_OUTSIDE_FUNCTION_PREFIXES = ("iceberg", "deltalake", "hudi", "paimon", "s3", "hdfs", "azureblob", "remote")

# Keyword pairs no read needs: `INTO OUTFILE` writes a file (and chDB's readonly mode lets it), and
# `INSERT INTO` would make clickhouse-connect route the statement down its SET-settings path.
_FORBIDDEN_PAIRS = (("INTO", "OUTFILE"), ("INSERT", "INTO"))


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def name(self) -> str:
        """The identifier a word or a quoted identifier stands for (quotes and escapes removed)."""
        if self.kind == _QUOTED_IDENTIFIER:
            quote_char = self.text[0]
            inner = self.text[1:-1].replace(quote_char * 2, quote_char)
            return inner.replace("\\" + quote_char, quote_char).replace("\\\\", "\\")
        return self.text

    def is_keyword(self, keyword: str) -> bool:
        return self.kind == _WORD and self.text.upper() == keyword

    def is_punctuation(self, char: str) -> bool:
        return self.kind == _PUNCTUATION and self.text == char


def _scan_quoted(sql: str, pos: int) -> int:
    """End of the quoted string or identifier opening at `pos`, as ClickHouse's quotedString finds it."""
    quote_char = sql[pos]
    start = pos
    end = len(sql)
    pos += 1
    while pos < end:
        char = sql[pos]
        if char == "\\":
            pos += 2
        elif char == quote_char:
            if pos + 1 < end and sql[pos + 1] == quote_char:
                pos += 2
            else:
                return pos + 1
        else:
            pos += 1
    raise ReadOnlyRefused(f"unterminated {quote_char} quote starting at position {start}")


def _is_number_separator(sql: str, pos: int, start_of_block: bool, hexadecimal: bool) -> bool:
    """ClickHouse's isNumberSeparator: `_` between digits, as in 1_000_000."""
    if sql[pos] != "_" or start_of_block or pos + 1 >= len(sql):
        return False
    return sql[pos + 1] in (_HEX_DIGITS if hexadecimal else _DIGITS)


def _scan_digits(sql: str, pos: int, start_of_block: bool, hexadecimal: bool) -> int:
    digits = _HEX_DIGITS if hexadecimal else _DIGITS
    while pos < len(sql) and (
        sql[pos] in digits or _is_number_separator(sql, pos, start_of_block, hexadecimal)
    ):
        pos += 1
        start_of_block = False
    return pos


def _scan_exponent(sql: str, pos: int, hexadecimal: bool) -> int:
    """Exponent of a number; like ClickHouse, it takes a sign even when no digit follows."""
    end = len(sql)
    if pos + 1 < end and sql[pos] in ("pP" if hexadecimal else "eE"):
        pos += 1
        if pos + 1 < end and sql[pos] in "+-":
            pos += 1
        pos = _scan_digits(sql, pos, True, False)
    return pos


def _scan_number(sql: str, pos: int) -> int:
    """End of the number starting with a digit at `pos` (a word if letters follow, as in 1st)."""
    end = len(sql)
    hexadecimal = False
    start_of_block = False
    if pos + 2 < end and sql[pos] == "0" and sql[pos + 1] in "xXbB":
        if sql[pos + 1] in "xX":
            hexadecimal = sql[pos + 2] in _HEX_DIGITS
            valid = hexadecimal
        else:
            valid = sql[pos + 2] in "01"
        pos += 2 if valid else 1
        start_of_block = valid
    else:
        pos += 1
    pos = _scan_digits(sql, pos, start_of_block, hexadecimal)
    if pos < end and sql[pos] == ".":
        pos = _scan_digits(sql, pos + 1, True, hexadecimal)
    return _scan_exponent(sql, pos, hexadecimal)


def _scan_fraction(sql: str, pos: int) -> int:
    """End of a number that starts with its decimal point, as in .5e-3."""
    return _scan_exponent(sql, _scan_digits(sql, pos + 1, True, False), False)


def _scan_word_tail(sql: str, pos: int) -> int:
    while pos < len(sql) and sql[pos] in _WORD_CHARS:
        pos += 1
    return pos


def _scan_comment(sql: str, pos: int) -> int | None:
    """End of the comment starting at `pos`, or None when no comment starts there."""
    pair = sql[pos : pos + 2]
    if pair in ("--", "//") or pair in ("# ", "#!"):
        newline = sql.find("\n", pos)
        return len(sql) if newline < 0 else newline
    if pair != "/*":
        return None
    depth = 1
    pos += 2
    while pos + 2 <= len(sql):
        pair = sql[pos : pos + 2]
        if pair == "/*":
            depth += 1
            pos += 2
        elif pair == "*/":
            depth -= 1
            pos += 2
            if depth == 0:
                return pos
        else:
            pos += 1
    raise ReadOnlyRefused("unterminated /* comment")


def _scan_heredoc(sql: str, pos: int) -> int | None:
    """End of the `$tag$ ... $tag$` string starting at `pos`, or None when none starts there."""
    tag_end = sql.find("$", pos + 1)
    if tag_end < 0:
        return None
    tag = sql[pos : tag_end + 1]
    closing = sql.find(tag, tag_end + 1)
    return None if closing < 0 else closing + len(tag)


def _tokenize(sql: str) -> list[_Token]:
    """The significant tokens of `sql`: whitespace and comments dropped, strings kept whole."""
    tokens: list[_Token] = []
    pos = 0
    end = len(sql)
    while pos < end:
        char = sql[pos]
        start = pos
        kind = _PUNCTUATION
        if char in _ASCII_WHITESPACE or (not char.isascii() and char.isspace()):
            pos += 1
            continue
        comment_end = _scan_comment(sql, pos)
        if comment_end is not None:
            pos = comment_end
            continue
        if char in _DIGITS and tokens and tokens[-1].is_punctuation("."):
            # After a dot only an integer, so that tuple access x.1.2 stays three steps.
            pos, kind = _scan_digits(sql, pos + 1, False, False), _NUMBER
        elif char in _DIGITS:
            pos, kind = _scan_number(sql, pos), _NUMBER
        elif char == "." and pos + 1 < end and sql[pos + 1] in _DIGITS and not _ends_operand(tokens):
            pos, kind = _scan_fraction(sql, pos), _NUMBER
        elif char in "'\"`":
            pos, kind = _scan_quoted(sql, pos), (_STRING if char == "'" else _QUOTED_IDENTIFIER)
        elif char in "xXbB" and pos + 2 < end and sql[pos + 1] == "'":
            pos, kind = _scan_quoted(sql, pos + 1), _STRING
        elif char == "$" and (heredoc_end := _scan_heredoc(sql, pos)) is not None:
            pos, kind = heredoc_end, _STRING
        elif char == "$" and (pos + 1 == end or sql[pos + 1] not in _WORD_CHARS):
            pos += 1
        elif char in _WORD_CHARS or char == "$":
            pos += 1
            while pos < end and (sql[pos] in _WORD_CHARS or sql[pos] == "$"):
                pos += 1
            kind = _WORD
        elif char in _PUNCTUATION_CHARS:
            pos += 1
        else:
            raise ReadOnlyRefused(f"unexpected character {char!r} at position {pos}")
        if kind == _NUMBER and pos < end and sql[pos] in _WORD_CHARS:
            pos, kind = _scan_word_tail(sql, pos), _WORD
        tokens.append(_Token(kind, sql[start:pos], start, pos))
    return tokens


def _ends_operand(tokens: list[_Token]) -> bool:
    """Whether a `.` after these tokens is member access (t.1, x.1.2) rather than the start of .5."""
    if not tokens:
        return False
    last = tokens[-1]
    return last.kind in (_WORD, _QUOTED_IDENTIFIER, _NUMBER) or last.text in (")", "]")


def _single_statement(tokens: list[_Token]) -> list[_Token]:
    """The tokens of the only statement, without its optional closing `;`."""
    for index, token in enumerate(tokens):
        if token.is_punctuation(";"):
            if index + 1 < len(tokens):
                raise ReadOnlyRefused("only one statement is allowed; found more after a ';'")
            return tokens[:index]
    return tokens


def _first_keyword(tokens: list[_Token], index: int) -> tuple[str, int]:
    """The statement keyword at `index`, after any opening brackets, as in (SELECT 1)."""
    while index < len(tokens) and tokens[index].is_punctuation("("):
        index += 1
    if index == len(tokens):
        return "", index
    token = tokens[index]
    return (token.text.upper() if token.kind == _WORD else token.text), index


def _check_statement_kind(tokens: list[_Token]) -> None:
    keyword, index = _first_keyword(tokens, 0)
    if keyword not in _ALLOWED_FIRST_KEYWORDS:
        allowed = ", ".join(sorted(_ALLOWED_FIRST_KEYWORDS))
        raise ReadOnlyRefused(f"only read statements ({allowed}) are allowed, not {keyword or 'this'}")
    if keyword != "EXPLAIN":
        return
    # EXPLAIN [kind] [setting = value, ...] <statement>: only reads may be explained, because
    # some kinds (PIPELINE, ESTIMATE) build the explained statement's plan against real tables.
    index += 1
    if index < len(tokens) and tokens[index].kind == _WORD and tokens[index].text.upper() in _EXPLAIN_KINDS:
        index += 1
    elif (
        index + 1 < len(tokens) and tokens[index].is_keyword("QUERY") and tokens[index + 1].is_keyword("TREE")
    ):
        index += 2
    while index + 2 < len(tokens) and tokens[index].kind == _WORD and tokens[index + 1].is_punctuation("="):
        index += 3
        if index < len(tokens) and tokens[index].is_punctuation(","):
            index += 1
    explained, _ = _first_keyword(tokens, index)
    if explained not in _EXPLAINABLE_FIRST_KEYWORDS:
        raise ReadOnlyRefused(
            f"EXPLAIN is allowed for SELECT and WITH queries only, not {explained or 'this'}"
        )


def _reaches_outside(function: str) -> bool:
    name = function.lower()
    return name in _OUTSIDE_FUNCTIONS or name.startswith(_OUTSIDE_FUNCTION_PREFIXES)


def _check_contents(tokens: list[_Token]) -> None:
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.kind in (_WORD, _QUOTED_IDENTIFIER) and following is not None:
            if following.is_punctuation("(") and _reaches_outside(token.name):
                raise ReadOnlyRefused(
                    f"function {token.name}() reaches outside the database and is not allowed"
                )
            for first, second in _FORBIDDEN_PAIRS:
                if token.is_keyword(first) and following.is_keyword(second):
                    raise ReadOnlyRefused(f"{first} {second} is not allowed in a read-only query")
    settings_at = next((i for i, token in enumerate(tokens) if token.is_keyword("SETTINGS")), None)
    if settings_at is not None and any(
        token.kind in (_WORD, _QUOTED_IDENTIFIER) and token.name.lower() == "readonly"
        for token in tokens[settings_at + 1 :]
    ):
        raise ReadOnlyRefused("a SETTINGS clause may not change readonly")


def check_read_only(sql: str) -> str:
    """The single read-only statement in `sql`, trimmed of comments and `;` around it.

    Raises ReadOnlyRefused, with the reason, for anything else. This is the first of the endpoint's
    defences, and the only one against what chDB's readonly mode lets through (INTO OUTFILE and
    the scalar file() function), so it refuses whatever it cannot read with certainty.
    """
    tokens = _single_statement(_tokenize(sql))
    if not tokens:
        raise ReadOnlyRefused("the query is empty")
    _check_statement_kind(tokens)
    _check_contents(tokens)
    return sql[tokens[0].start : tokens[-1].end]
