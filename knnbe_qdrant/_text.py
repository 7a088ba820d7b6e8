"""Which texts the package accepts, checked once at every door (the library, the command line, the service) before
a text reaches a shared batch or the store: a string, valid Unicode that UTF-8 can carry, not empty once control
characters are taken out, and no longer than what is stored for that kind of field. It comes back `normalized`:
"café" typed with a combining accent (as macOS and some editors give it) and with the composed letter look the same
and encode the same, and were two memory points voting twice, with a label findable in one spelling only.

A lone surrogate (JSON's "\\ud800", or a byte that is not UTF-8 in a command-line argument, which Python decodes as
one) cannot be tokenized or stored; one such text used to fail the whole micro-batch it travelled in.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from ._errors import InvalidInputError

# What every stored field may hold at most, in characters. ESCO v1.1.0's longest preferred label has 87 characters,
# its longest description 692, its longest id 69; the bounds leave room for any real taxonomy while keeping one
# tenant's point (and so the audit log, the listings and every other tenant's reads) small.
MAX_SKILL_ID = 512
MAX_LABEL = 512
MAX_DESCRIPTION = 8_000
MAX_SOURCE = 200
MAX_MEMORY_TEXT = 5_000
MAX_SKILL_REF = max(MAX_SKILL_ID, MAX_LABEL)
"""A skill named by its id or its exact preferred label."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_FORMAT = ("\\xad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b-\\u200f\\u202a-\\u202e"
           "\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb")
"""The format characters (Unicode Cf) of the Basic Multilingual Plane: invisible, and dropped by the tokenizer."""
VISIBLE = "[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000" + _FORMAT + "]"
"""A character that is neither whitespace (str.isspace), a control character (Unicode Cc) nor a format character,
spelled out so that Python and an OpenAPI client's JSON Schema (ECMA-262) read the same pattern: a text must hold
one. "\\u200b" alone was a sentence: stored, encoded as the empty text, and mapped to skills."""
_VISIBLE = re.compile(VISIBLE)
_BREAK_HINTS = re.compile("[\xad\u200b\u2060\ufeff]")
"""Soft hyphen, zero-width space, word joiner, byte-order mark: where a line may break or not, nothing more (text
copied from web pages and PDFs carries them). Taken out of stored texts: "Python\u200b scripting" was a second
point beside "Python scripting", with the same vector. Joiners (U+200C, U+200D) and direction marks stay: they
change how some scripts and emoji read."""


def normalized(value: str) -> str:
    """`value` without line-break hints, stripped, in Unicode NFC: the one form texts are stored and looked up in."""
    return unicodedata.normalize("NFC", _BREAK_HINTS.sub("", value).strip())


def check_text(value: Any, what: str, *, max_chars: int | None = None) -> str:
    """`value` normalized, or InvalidInputError naming `what` and the problem."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} is a {type(value).__name__}, not a string")
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise InvalidInputError(
            f"{what} is not valid Unicode: a lone surrogate (U+{ord(bad.group()):04X}) at character {bad.start()}; "
            "in a command-line argument this is a byte that is not UTF-8"
        )
    text = normalized(value)
    if _VISIBLE.search(text) is None:
        raise InvalidInputError(f"{what} is empty once whitespace, control and format characters are taken out")
    if max_chars is not None and len(text) > max_chars:
        raise InvalidInputError(f"{what} has {len(text)} characters, at most {max_chars}")
    return text


def check_optional_text(value: Any, what: str, *, max_chars: int) -> str:
    """Like check_text, where an empty text is allowed (a description, say): returns "" for one."""
    if isinstance(value, str) and _VISIBLE.search(value) is None and not _SURROGATE.search(value):
        return ""  # nothing visible: no text, as an empty one
    return check_text(value, what, max_chars=max_chars)
