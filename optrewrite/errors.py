"""Error types, the exit codes the CLI maps them to, and making untrusted text safe to print.

Names come from graphs and specs that optrewrite did not write: a node name may hold an ESC
sequence that clears a terminal, a CR or LF that forges a line of output, or a bidi override
that shows text in another order than it is. :func:`printable` shows such characters as
escapes; every message, table, diff line, summary and drawing label passes names through it
(an :class:`OptrewriteError`'s message does itself). JSON output keeps names exact: JSON
escapes control characters itself.
"""
from __future__ import annotations

import re

EXIT_OK = 0
EXIT_DIFFERENT = 1  # diff: the graphs differ; --check: rewriting would change the graph
EXIT_INPUT = 2
EXIT_INTERNAL = 3


class OptrewriteError(Exception):
    """Base class of errors that carry a short, user-facing message.

    The message is made :func:`printable` here, so a name it quotes raw cannot break the one
    line it is printed as."""

    exit_code = EXIT_INTERNAL

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (printable(args[0]), *args[1:])
        super().__init__(*args)


class InputError(OptrewriteError):
    """The input graph, the spec or the command line is wrong; the user must fix it."""

    exit_code = EXIT_INPUT


class SpecError(InputError):
    """The spec file is invalid; the message names the file, line and field."""

    def __init__(self, source: str, field: str, message: str, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.source = source
        self.field = field
        self.line = line


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, for quoting names and values in a one-line message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten_middle(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters in its middle: a message's end often says what
    went wrong, its start where."""
    if len(text) <= limit:
        return text
    head = (limit - 3) * 2 // 3
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


def quoted(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut for a one-line message."""
    return shorten(repr(value), limit)


# C0 controls (tab and newline too), DEL and C1 controls; the Unicode line and paragraph
# separators; the bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and
# marks (U+061C, U+200E, U+200F); lone surrogates, which no terminal encoding can write.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to print on a terminal, one line: control characters, line and paragraph
    separators, bidi controls and lone surrogates as ``\\xNN`` / ``\\uNNNN`` escapes (as Python
    writes them); everything else, letters of any script included, as it is."""
    return _UNSAFE.sub(_escape, text)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 update``, ``2 updates`` (``nouns``: the plural when it is not ``noun + "s"``)."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"
