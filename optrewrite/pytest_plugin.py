"""pytest plugin (entry point ``optrewrite``): golden graphs in your own tests.

Adds the option ``--optrewrite-regen``: for the session, :func:`optrewrite.testing.assert_graph_matches`
called without ``regen`` writes each actual graph over its expected file instead of comparing
(as ``OPTREWRITE_REGEN=1`` does); without either it never does. Also the fixture
``graph_golden``, a callable ``graph_golden(actual, expected)`` that runs the assertion and
fails the test with the graph diff alone, without a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from optrewrite import testing
from optrewrite.testing import REGEN_ENV, REGEN_OPTION, assert_graph_matches

GraphGolden = Callable[["str | Path", "str | Path"], None]
_PREVIOUS = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("optrewrite", "optrewrite golden graphs")
    group.addoption(
        REGEN_OPTION, action="store_true", default=False, dest="optrewrite_regen",
        help=f"golden graphs: write each actual graph over its expected file instead of comparing "
        f"(as {REGEN_ENV}=1 does); review the changes before committing them",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_PREVIOUS] = testing.set_session_regen(bool(config.getoption("optrewrite_regen")))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PREVIOUS in config.stash:
        testing.set_session_regen(config.stash[_PREVIOUS])


@pytest.fixture
def graph_golden() -> GraphGolden:
    """``graph_golden(actual, expected)``: fail unless the graphs match, or regenerate on request."""

    def check(actual: str | Path, expected: str | Path) -> None:
        try:
            assert_graph_matches(actual, expected, regen=None)  # the session's option, set at configure
        except AssertionError as exc:
            message = str(exc)
        else:
            return
        pytest.fail(message, pytrace=False)

    return check
