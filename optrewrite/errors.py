"""Error types and the exit codes the CLI maps them to."""
from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERENT = 1  # diff: the graphs differ; --check: rewriting would change the graph
EXIT_INPUT = 2
EXIT_INTERNAL = 3


class OptrewriteError(Exception):
    """Base class of errors that carry a short, user-facing message."""

    exit_code = EXIT_INTERNAL


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


def quoted(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut for a one-line message."""
    return shorten(repr(value), limit)
