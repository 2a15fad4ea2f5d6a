"""Golden-graph assertions for tests: a graph file must equal a reviewed expected graph.

    from optrewrite.testing import assert_graph_matches

    def test_export(tmp_path):
        export_model(tmp_path / "model.pb")
        assert_graph_matches(tmp_path / "model.pb", "tests/golden/model.pbtxt")

The graphs are compared structurally (:mod:`optrewrite.diff`): node order and the encoding
do not matter, so a binary output may have a text golden that reviewers can read. A
difference fails with the diff. Expected files change only on request: ``regen=True``, the
pytest option ``--optrewrite-regen`` (added by :mod:`optrewrite.pytest_plugin`, which also
offers the fixture ``graph_golden``) or ``OPTREWRITE_REGEN=1`` in the environment.
"""
from __future__ import annotations

import os
from pathlib import Path

from optrewrite.errors import InputError
from optrewrite.fileio import read_input, write_atomic
from optrewrite.formats import format_for

REGEN_OPTION = "--optrewrite-regen"
REGEN_ENV = "OPTREWRITE_REGEN"


_session_regen = False  # set by the pytest plugin for a session run with --optrewrite-regen


def set_session_regen(on: bool) -> bool:
    """Make ``regen=None`` mean ``on`` (the pytest plugin's option); returns the previous value."""
    global _session_regen
    previous, _session_regen = _session_regen, on
    return previous


def regen_requested() -> bool:
    """Whether the pytest session's ``--optrewrite-regen`` or ``OPTREWRITE_REGEN=1`` asks to regenerate."""
    return _session_regen or os.environ.get(REGEN_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _how_to_regen() -> str:
    return f"run the test with {REGEN_OPTION} (pytest) or {REGEN_ENV}=1"


def assert_graph_matches(actual: str | Path, expected: str | Path, *, regen: bool | None = None) -> None:
    """Fail unless the graph in ``actual`` equals the one in ``expected``.

    1. ``regen`` true (None: as :func:`regen_requested` says): write ``actual``'s graph over
       ``expected`` atomically, in ``expected``'s encoding, unless they already compare equal.
    2. ``expected`` missing: AssertionError saying how to create it.
    3. They differ, or cannot be compared: AssertionError with the diff, ``-`` for what only
       ``expected`` has, ``+`` for what only ``actual`` has.
    """
    from optrewrite.diff import diff_files  # noqa: PLC0415

    actual, expected = Path(actual), Path(expected)
    if regen is None:
        regen = regen_requested()
    if regen:
        try:
            write_expected(actual, expected)
        except InputError as exc:
            raise AssertionError(f"cannot regenerate {expected}: {exc}") from None
        return
    if not expected.exists():
        raise AssertionError(
            f"{expected}: no expected graph yet; to create it from the actual graph ({actual}), "
            f"{_how_to_regen()}, then review and commit it"
        )
    try:
        diff = diff_files(expected, actual)
    except InputError as exc:
        raise AssertionError(f"cannot compare {actual} with {expected}: {exc}") from None
    if not diff.same:
        raise AssertionError(
            diff.render(str(expected), str(actual))
            + f"\nIf the change is intended, {_how_to_regen()} to rewrite {expected}, and review its diff."
        )


def write_expected(actual: Path, expected: Path) -> bool:
    """Write the graph in ``actual`` to ``expected``, unless it already holds an equal graph.

    The graph is encoded as ``expected``'s name asks (the format's ``encode_as``: an ONNX
    model as it is; a TensorFlow graph in binary when ``expected`` is named ``.pb``,
    ``.graphdef`` or ``.meta``, else in text format); before it replaces anything the new
    file is read back and must compare equal to ``actual``.
    Missing parent folders of ``expected`` are created.
    Returns whether it wrote. Raises InputError when ``actual`` is not a graph or
    ``expected``'s name cannot hold it.
    """
    from optrewrite.diff import diff_bytes, diff_files  # noqa: PLC0415

    if expected.exists():
        try:
            if diff_files(expected, actual).same:
                return False
        except InputError:
            pass  # replaced below, as long as actual is a graph that expected's name can hold
    raw = read_input(actual)
    data = _encoded_as(expected, actual, raw)
    check = diff_bytes(actual, raw, expected, data)
    if not check.same:
        raise InputError(f"{expected}: its format cannot hold {actual} exactly ({check.lines[0]})")
    try:
        expected.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{expected.parent}: cannot create the folder: {exc.strerror or exc}") from None
    write_atomic(expected, data)
    return True


def _encoded_as(expected: Path, actual: Path, raw: bytes) -> bytes:
    """``actual``'s graph (bytes ``raw``) as ``expected``'s name asks for it."""
    fmt, wanted = format_for(actual), format_for(expected)
    if fmt is not wanted:
        raise InputError(f"{actual} and {expected} name graphs of different formats")
    return fmt.encode_as(actual, raw, expected)
