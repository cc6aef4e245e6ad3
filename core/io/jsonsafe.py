"""JSON from users' files, with every way it can fail turned into an ``InputError`` that names the place.

    obj = loads(text, "data.json")                  # a whole file: errors name its line
    rec = loads(line, "data.jsonl", line=12)         # one JSON Lines record
    check_record_size(line, "data.jsonl", line=12)   # before parsing: a record past MAX_RECORD_CHARS is refused

Besides malformed JSON (``JSONDecodeError``), Python's parser raises ``RecursionError`` on deep nesting
(about 1,000 levels) and ``ValueError`` on integers past its 4,300-digit conversion limit; both would reach the
user as tracebacks. A record's size is bounded so that one enormous line never reaches the tokenizer (a 50 MB
trajectory took a tokenizer to 4.8 GB and an abort): 1 MiB of text is about 250,000 tokens, far past any
model context the workbench scores, and far past the 1,000-4,000-token chains of thought it is built for.
"""

from __future__ import annotations

import json
import re

from core.errors import InputError

MAX_RECORD_CHARS = 1 << 20  # one record (a JSONL line, an item of a JSON array): 1 Mi characters
_BIG_INT = re.compile(r"\d{4000,}")


def check_record_size(text: str, name: str, line: int | None = None, where: str | None = None) -> None:
    if len(text) > MAX_RECORD_CHARS:
        place = where or (f"line {line}" if line else "a record")
        raise InputError(f"{name}, {place}: the record has {len(text):,} characters, more than the "
                         f"{MAX_RECORD_CHARS:,} a record may have (about 250,000 tokens); split or shorten it")


def loads(text: str, name: str, line: int | None = None) -> object:
    """``json.loads(text)``; failures name ``name`` and the line (``line`` for one JSONL record, else the
    line in ``text``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{name}, line {line or e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(f"{name}, line {line or _line_of_depth(text)}: JSON nested too deeply "
                         "(a record may nest objects and arrays a few hundred levels at most)") from None
    except ValueError as e:  # int('9' * 5000): "Exceeds the limit (4300 digits) for integer string conversion"
        m = _BIG_INT.search(text)
        at = line or (text.count("\n", 0, m.start()) + 1 if m else 1)
        raise InputError(f"{name}, line {at}: a number too long to read ({str(e).split(';')[0]})") from None


def _line_of_depth(text: str, depth: int = 500) -> int:
    """The line where nesting first passes ``depth`` (strings skipped), for the error message."""
    level, in_string, escaped, lineno = 0, False, False, 1
    for ch in text:
        if ch == "\n":
            lineno += 1
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            level += 1
            if level > depth:
                return lineno
        elif ch in "]}":
            level -= 1
    return lineno
