"""A spec is untrusted input: its size is bounded, and no pattern is compiled twice.

Was: a 1 MB YAML scalar reused through 2,000 aliases took minutes (one pattern translation
per alias), one 50 MB pattern 134 s and 7.5 GB. Nothing here is timed: the tests count the
pattern compilations and check each bound's message.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable

import pytest

from optrewrite import spec as spec_module
from optrewrite.errors import SpecError
from optrewrite.spec import (
    MAX_CLIP_GROUPS,
    MAX_DIMS,
    MAX_NAME_CHARS,
    MAX_PATTERN_CHARS,
    MAX_PATTERNS,
    MAX_SPEC_BYTES,
    MAX_STATE_PAIRS,
    MAX_UPDATES,
    parse_spec,
)


def refused(text: str, *fragments: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "w.yaml")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each pattern text was translated (globs) or compiled (``re:`` patterns)."""
    counts: dict[str, int] = {}

    def counting(real: Callable[..., Any], key: Callable[[Any], str]) -> Callable[..., Any]:
        def wrapper(pattern: Any, *args: Any, **kwargs: Any) -> Any:
            counts[key(pattern)] = counts.get(key(pattern), 0) + 1
            return real(pattern, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(fnmatch, "translate", counting(fnmatch.translate, lambda p: p))
    monkeypatch.setattr(re, "compile", counting(re.compile, lambda p: "re:" + p if isinstance(p, str) else repr(p)))
    return counts


def aliased(first: str, uses: int) -> str:
    """A flow list of ``first`` anchored, then ``uses`` aliases of it."""
    return "[&p " + first + "".join(", *p" for _ in range(uses)) + "]"


# --------------------------------------------------------------------------- patterns


def test_a_megabyte_scalar_through_2000_aliases_is_refused_before_any_compilation(compiled: dict[str, int]) -> None:
    text = f"version: 1\nguard:\n  variables: {aliased('x' * 1_000_000, 2000)}\n"
    refused(text, "w.yaml:3: guard.variables[0]: 'xxxxxxxxxxxxxxxxxxxx... has 1,000,000 characters; "
                  f"at most {MAX_PATTERN_CHARS:,} are allowed")
    assert not any(len(key) > MAX_PATTERN_CHARS for key in compiled), "a long pattern was compiled"


@pytest.mark.parametrize("pattern", ["g" * 900 + "*", "re:" + "r" * 900 + ".*"], ids=["glob", "regex"])
def test_a_pattern_reused_through_aliases_is_compiled_once(pattern: str, compiled: dict[str, int]) -> None:
    text = (f"version: 1\nguard:\n  variables: {aliased(pattern, 2000)}\n  exclude: [*p, *p]\n"
            "clip:\n" + "  - {variables: [*p, *p], max_norm: 1}\n" * 50
            + "global_norm_clip: {clip_norm: 1, variables: [*p]}\n")
    spec = parse_spec(text, "w.yaml")
    assert spec.guard is not None and len(spec.guard.select.include) == 2001
    assert compiled.get(pattern, 0) == 1, {k[:20]: n for k, n in compiled.items()}
    name = pattern.rstrip("*").removeprefix("re:").rstrip(".*") + "tail"
    assert spec.guard.select.include[-1].matches(name) and spec.clip[49].select.matches(name)


def test_distinct_patterns_are_each_compiled_once(compiled: dict[str, int]) -> None:
    spec = parse_spec("version: 1\nguard:\n  variables: [a*, 're:b.*', a*]\n  exclude: [a*]\n", "w.yaml")
    assert spec.guard is not None and spec.guard.select.matches("bx") and not spec.guard.select.matches("ax")
    assert compiled.get("a*") == 1 and compiled.get("re:b.*") == 1


def test_each_parse_compiles_afresh() -> None:
    """The cache lives inside one parse: a spec never sees another spec's patterns."""
    first = parse_spec("version: 1\nguard:\n  variables: [a*]\n")
    second = parse_spec("version: 1\nguard:\n  variables: [a*]\n")
    assert first.guard is not None and second.guard is not None
    assert first.guard.select.include[0] == second.guard.select.include[0]
    assert spec_module._PARSE.get(None) is None  # nothing left behind


@pytest.mark.parametrize("where", ["guard:\n  variables: [{p}]", "guard:\n  exclude: [{p}]",
                                   "clip:\n  - {{variables: [a, {p}], max_norm: 1}}",
                                   "global_norm_clip: {{clip_norm: 1, variables: [{p}]}}"])
@pytest.mark.parametrize("prefix", ["", "re:"])
def test_a_pattern_longer_than_the_bound_is_a_spec_error_naming_the_field(where: str, prefix: str) -> None:
    fits = prefix + "a" * (MAX_PATTERN_CHARS - len(prefix))
    parse_spec("version: 1\n" + where.format(p=fits) + "\n" + ("guard: {}\n" if "guard" not in where else ""))
    too_long = fits + "a"
    field = {"guard:\n  v": "guard.variables[0]", "guard:\n  e": "guard.exclude[0]",
             "clip:": "clip[0].variables[1]", "global_": "global_norm_clip.variables[0]"}
    expected = next(f for start, f in field.items() if where.startswith(start))
    refused("version: 1\n" + where.format(p=too_long) + "\n", f"{expected}: ",
            f"has {MAX_PATTERN_CHARS + 1:,} characters; at most {MAX_PATTERN_CHARS:,} are allowed")


def test_the_number_of_patterns_is_bounded_over_the_whole_spec() -> None:
    ten = "[" + ", ".join(f"p{i}" for i in range(10)) + "]"
    groups = MAX_PATTERNS // 10
    assert groups <= MAX_CLIP_GROUPS
    body = f"clip:\n  - {{variables: &ten {ten}, max_norm: 1}}\n" + "  - {variables: *ten, max_norm: 1}\n" * (groups - 1)
    parse_spec("version: 1\n" + body)
    refused("version: 1\n" + body + "guard: {variables: [one_more]}\n",
            "guard.variables[0]: ", f"the spec has more than {MAX_PATTERNS:,} patterns")
    refused(f"version: 1\nguard:\n  variables: {aliased('a', MAX_PATTERNS)}\n",
            f"guard.variables: lists {MAX_PATTERNS + 1} patterns; at most {MAX_PATTERNS:,} are allowed")


# --------------------------------------------------------------------------- counts and sizes


def test_clip_groups_are_bounded() -> None:
    group = "{variables: [a], max_norm: 1}"
    refused(f"version: 1\nclip: {aliased(group, MAX_CLIP_GROUPS)}\n",
            f"w.yaml:2: clip: lists {MAX_CLIP_GROUPS + 1} clip groups; at most {MAX_CLIP_GROUPS:,} are allowed")


def test_updates_and_their_state_pairs_are_bounded() -> None:
    entry = "{variable: W, gradient: dW, updated: W_new}"
    refused(f"version: 1\nlower: true\nupdates: {aliased(entry, MAX_UPDATES)}\n",
            f"updates: lists {MAX_UPDATES + 1} updates; at most {MAX_UPDATES:,} are allowed")
    pairs = ", ".join(f"[s{i}, s{i}_new]" for i in range(MAX_STATE_PAIRS + 1))
    refused(f"version: 1\nlower: true\nupdates:\n  - {{variable: W, gradient: dW, updated: W_new, state: [{pairs}]}}\n",
            f"updates[0].state: lists {MAX_STATE_PAIRS + 1} state pairs; at most {MAX_STATE_PAIRS:,} are allowed")


def test_names_in_updates_are_bounded() -> None:
    long = "W" * (MAX_NAME_CHARS + 1)
    refused(f"version: 1\nlower: true\nupdates:\n  - {{variable: {long}, gradient: dW, updated: W_new}}\n",
            "updates[0].variable: 'WWWWWWWWWWWWWWWWWWWW... has "
            f"{MAX_NAME_CHARS + 1:,} characters; at most {MAX_NAME_CHARS:,} are allowed")


def test_dims_are_bounded() -> None:
    dims = ", ".join(str(i) for i in range(MAX_DIMS + 1))
    refused(f"version: 1\nclip:\n  - {{variables: [a], max_norm: 1, dims: [{dims}]}}\n",
            f"clip[0].dims: lists {MAX_DIMS + 1} dims; at most {MAX_DIMS:,} are allowed")


def test_spec_text_is_bounded() -> None:
    refused("version: 1\nguard: {}\n#" + "x" * MAX_SPEC_BYTES, "w.yaml: the spec has ",
            f"characters; at most {MAX_SPEC_BYTES:,} are allowed")


def test_aliases_are_counted_each_time_they_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry reused through aliases costs its size at each use: past the bound, a SpecError
    instead of a walk over an expanded alias bomb."""
    monkeypatch.setattr(spec_module, "MAX_YAML_NODES", 1_000)
    pairs = ", ".join(f"[s{i}, s{i}_new]" for i in range(MAX_STATE_PAIRS))
    entry = f"{{variable: W, gradient: dW, updated: W_new, state: [{pairs}]}}"
    parse_spec(f"version: 1\nlower: true\nupdates: {aliased(entry, 10)}\n")  # about 600 nodes
    refused(f"version: 1\nlower: true\nupdates: {aliased(entry, 20)}\n",
            "the spec has more than 1,000 YAML nodes (an alias counts each time it is used)")


def test_without_libyaml_the_composer_counts_nodes_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "_FAST_LOADER", None)
    monkeypatch.setattr(spec_module, "MAX_YAML_NODES", 1_000)
    parse_spec("version: 1\nguard:\n  variables: " + aliased("a", 10) + "\n")
    refused("version: 1\nguard:\n  variables: [a]\nunused: " + aliased("a", 1_000) + "\n",
            "w.yaml:4: the spec has more than 1,000 YAML nodes")


@pytest.mark.parametrize("fast", [True, False], ids=["libyaml", "pyyaml"])
def test_deep_nesting_reads_the_same_with_either_parser(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not fast:
        monkeypatch.setattr(spec_module, "_FAST_LOADER", None)
    elif spec_module._FAST_LOADER is None:
        pytest.skip("PyYAML without libyaml")
    refused("version: 1\nguard:\n  variables: " + "[" * 5000 + "]" * 5000 + "\n",
            "invalid YAML: collections nested too deeply")


def test_ordinary_anchors_and_aliases_still_work() -> None:
    spec = parse_spec("version: 1\nguard:\n  variables: &v [dense/*]\nclip:\n  - variables: *v\n    max_norm: &n 2\n"
                      "global_norm_clip: {clip_norm: *n, variables: *v}\n")
    assert spec.clip[0].select.matches("dense/kernel") and spec.global_norm_clip is not None
    assert spec.global_norm_clip.clip_norm == 2.0
