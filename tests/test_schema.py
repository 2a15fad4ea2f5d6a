"""The shipped JSON Schemas: the spec schema agrees with the spec loader, real reports
validate against the report schema, and both schemas describe every field.

The spec loader (optrewrite/spec.py) is the authority. The schema sees the document
``yaml.safe_load`` makes of the text, so it cannot check, and these tests leave out of the
agreement:

- what needs a graph (``Spec.bind``: selectors match a variable, dims are in range);
- that a ``re:`` pattern compiles (only the loader compiles it);
- what YAML-to-JSON loses: repeated keys (the loader refuses them, ``safe_load`` keeps the
  last), ``<<`` merge keys (the loader refuses them), integral floats in integer fields
  (JSON has one number type, so ``1.0`` is an integer to the schema; the loader wants ``1``),
  ``.inf`` / ``.nan`` (not JSON numbers) and integers beyond every float (JSON numbers are
  unbounded), which the loader refuses as norms.

``test_accepted_divergences`` pins each of these down.
"""
from __future__ import annotations

import copy
import json
import random
import re
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from optrewrite import schema
from optrewrite.api import rewrite_file
from optrewrite.errors import SpecError
from optrewrite.report import Report, SiteEntry, SkipEntry
from optrewrite.spec import SUPPORTED_VERSIONS, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
CASES = sorted(p for p in FIXTURES.iterdir() if (p / "spec.yaml").exists())
SPEC = Draft202012Validator(schema.spec_schema())
REPORT = Draft202012Validator(schema.report_schema())


def schema_accepts(text: str) -> bool:
    return SPEC.is_valid(yaml.safe_load(text))


def loader_accepts(text: str) -> bool:
    try:
        parse_spec(text, "w.yaml")
    except SpecError:
        return False
    return True


def readme_specs() -> list[str]:
    """The README's ```yaml blocks that are specs (a mapping with a version, not a manifest's
    jobs), not other configs."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    return [b for b in blocks if isinstance(doc := yaml.safe_load(b), dict) and "version" in doc and "jobs" not in doc]


# --------------------------------------------------------------------------- the schemas


@pytest.mark.parametrize("name", schema.NAMES)
def test_schema_is_valid_draft_2020_12_and_shipped_as_text(name: str) -> None:
    text = schema.schema_text(name)
    loaded = {"spec": schema.spec_schema, "report": schema.report_schema}[name]()
    Draft202012Validator.check_schema(loaded)
    assert json.loads(text) == loaded
    assert loaded["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert loaded["$id"] == f"urn:optrewrite:schema:{name}:1"
    assert loaded["title"] and loaded["description"]


def test_unknown_schema_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown schema 'graph'"):
        schema.schema_text("graph")


def _properties(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, subschema) under a ``properties`` keyword, recursively."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for key, sub in node.items():
            if key == "properties" and all(isinstance(v, dict) for v in sub.values()):
                out += [(f"{path}/{name}", value) for name, value in sub.items()]
            out += _properties(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            out += _properties(sub, f"{path}/{i}")
    return out


@pytest.mark.parametrize("name", schema.NAMES)
def test_every_property_has_a_description(name: str) -> None:
    loaded = {"spec": schema.spec_schema, "report": schema.report_schema}[name]()
    described = _properties(loaded)
    assert len(described) > 10
    # Subschemas inside anyOf/if only narrow properties described elsewhere.
    missing = [p for p, sub in described if "description" not in sub and "/anyOf/" not in p and "/if/" not in p
               and "/then/" not in p]
    assert not missing


def test_spec_schema_versions_are_the_loaders() -> None:
    assert schema.spec_schema()["properties"]["version"]["enum"] == list(SUPPORTED_VERSIONS)


def test_report_schema_names_every_report_field() -> None:
    s = schema.report_schema()
    top = {f.name for f in fields(Report)} | {"schema", "counts"}
    assert set(s["properties"]) == set(s["required"]) == top
    assert set(s["properties"]["counts"]["properties"]) == set(Report("x", "ONNX").counts())
    assert set(s["$defs"]["site"]["properties"]) == {f.name for f in fields(SiteEntry)}
    assert set(s["$defs"]["skip"]["properties"]) == {f.name for f in fields(SkipEntry)}


# --------------------------------------------------------------------------- valid specs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture_specs_validate(case: Path) -> None:
    path = case / "spec.yaml"
    SPEC.validate(yaml.safe_load(path.read_text()))
    load_spec(path)


def test_readme_spec_examples_validate(tmp_path: Path) -> None:
    blocks = readme_specs()
    assert blocks, "README.md has no ```yaml block with a spec"
    for i, text in enumerate(blocks):
        SPEC.validate(yaml.safe_load(text))
        path = tmp_path / f"readme{i}.yaml"
        path.write_text(text)
        load_spec(path)


_CLIP_TEXT = "version: 1\nclip:\n  - variables: [a]\n    max_norm: 1\n"
GOOD = {
    "guard-null": "version: 1\nguard:\n",
    "guard-empty-mapping": "version: 1\nguard: {}\n",
    "guard-exclude-only": "version: 1\nguard:\n  exclude: ['re:.*/bias']\n",
    "clip-only": "version: 1\nclip:\n  - variables: [a]\n    max_norm: 2\n",
    "clip-negative-dims": "version: 1\nclip:\n  - variables: [a]\n    dims: [-1, 0]\n    max_norm: 0.5\n",
    "clip-all-keys": (
        "version: 1\nclip:\n  - variables: [a]\n    exclude: []\n    dims: [1]\n    max_norm: 1.0e-3\n"
        "    colocate_with_variable: true\n    use_locking: false\n"
    ),
    "global-norm-only": "version: 1\nglobal_norm_clip: {clip_norm: 3}\n",
    "lower-only": "version: 1\nlower: true\n",
    "lower-yaml11-bool": "version: 1\nlower: yes\n",
    "lower-with-updates": (
        "version: 1\nlower: true\nupdates:\n  - {variable: W, gradient: dW, updated: W_new}\n"
        "  - {variable: b, gradient: db, updated: b_new, state: []}\n"
    ),
    "clip-empty-then-guard": "version: 1\nclip: []\nguard:\n",
    "guard-step-scope": "version: 1\nguard:\n  when: nonfinite\n  scope: step\n",
    "guard-variable-scope": "version: 1\nguard:\n  scope: variable\n",
    "guard-row": "version: 1\nguard:\n  granularity: row\n",
    "guard-counters": "version: 1\nguard: {counters: true, init_op: my_init}\n",
    "guard-element-step": "version: 1\nguard: {when: nonfinite, scope: step, granularity: element}\n",
    "clip-exact": _CLIP_TEXT + "    formula: exact\n",
    "clip-not-on-skipped-steps": "version: 1\nguard:\n" + _CLIP_TEXT[11:] + "    on_skipped_steps: false\n",
    "clip-on-skipped-steps-unguarded": _CLIP_TEXT + "    on_skipped_steps: true\n",
    "string-keys-quoted": "'version': 1\n\"guard\": {variables: ['*']}\n",
}


@pytest.mark.parametrize("text", GOOD.values(), ids=GOOD.keys())
def test_schema_and_loader_accept(text: str) -> None:
    assert schema_accepts(text)
    assert loader_accepts(text)


# --------------------------------------------------------------------------- invalid specs

_CLIP = "version: 1\nclip:\n  - variables: [a]\n    max_norm: 1\n"
_GNC = "version: 1\nglobal_norm_clip:\n  clip_norm: 1\n"
_UPD = "version: 1\nlower: true\nupdates:\n  - variable: W\n    gradient: dW\n    updated: W_new\n"

BAD = {
    # unknown keys, at each level
    "unknown-top": "version: 1\nguard:\nextra: 1\n",
    "unknown-guard": "version: 1\nguard:\n  variable: ['*']\n",
    "unknown-clip-group": _CLIP + "    axis: [1]\n",
    "unknown-global-norm": _GNC + "  norm: 2\n",
    "unknown-update": _UPD + "    slots: []\n",
    # version
    "missing-version": "guard:\n",
    "version-2": "version: 2\nguard:\n",
    "version-0": "version: 0\nguard:\n",
    "version-string": "version: '1'\nguard:\n",
    "version-bool": "version: true\nguard:\n",
    "version-fraction": "version: 1.5\nguard:\n",
    "version-null": "version:\nguard:\n",
    # the document
    "empty": "",
    "only-a-comment": "# nothing\n",
    "null-document": "~\n",
    "list-document": "- version: 1\n",
    "scalar-document": "version\n",
    "asks-for-nothing": "version: 1\n",
    "asks-for-nothing-lower-false": "version: 1\nlower: false\n",
    "asks-for-nothing-clip-empty": "version: 1\nclip: []\n",
    "asks-for-nothing-updates-only": "version: 1\nupdates:\n  - {variable: W, gradient: dW, updated: W_new}\n",
    # guard
    "guard-bool": "version: 1\nguard: true\n",
    "guard-list": "version: 1\nguard: ['*']\n",
    "guard-string": "version: 1\nguard: '*'\n",
    "guard-variables-string": "version: 1\nguard:\n  variables: '*'\n",
    "guard-variables-empty": "version: 1\nguard:\n  variables: []\n",
    "guard-variables-null": "version: 1\nguard:\n  variables:\n",
    "pattern-int": "version: 1\nguard:\n  variables: [1]\n",
    "pattern-empty": "version: 1\nguard:\n  variables: ['']\n",
    "pattern-null": "version: 1\nguard:\n  variables: [~]\n",
    "pattern-list": "version: 1\nguard:\n  variables: [[a]]\n",
    "pattern-date": "version: 1\nguard:\n  variables: [2001-01-01]\n",
    "exclude-string": "version: 1\nguard:\n  exclude: x\n",
    "exclude-bool-item": "version: 1\nguard:\n  exclude: [true]\n",
    # clip
    "clip-mapping": "version: 1\nclip: {variables: [a], max_norm: 1}\n",
    "clip-null": "version: 1\nclip:\n",
    "clip-group-string": "version: 1\nclip: [a]\n",
    "clip-missing-max-norm": "version: 1\nclip:\n  - variables: [a]\n",
    "clip-missing-variables": "version: 1\nclip:\n  - max_norm: 1\n",
    "clip-variables-empty": "version: 1\nclip:\n  - {variables: [], max_norm: 1}\n",
    "max-norm-zero": "version: 1\nclip:\n  - {variables: [a], max_norm: 0}\n",
    "max-norm-zero-float": "version: 1\nclip:\n  - {variables: [a], max_norm: 0.0}\n",
    "max-norm-negative": "version: 1\nclip:\n  - {variables: [a], max_norm: -1.5}\n",
    "max-norm-bool": "version: 1\nclip:\n  - {variables: [a], max_norm: true}\n",
    "max-norm-string": "version: 1\nclip:\n  - {variables: [a], max_norm: '1'}\n",
    "max-norm-null": "version: 1\nclip:\n  - {variables: [a], max_norm: ~}\n",
    "max-norm-list": "version: 1\nclip:\n  - {variables: [a], max_norm: [1]}\n",
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; 1.0e-3 is a number
    "max-norm-exponent-without-point": "version: 1\nclip:\n  - {variables: [a], max_norm: 1e-3}\n",
    "dims-int": _CLIP + "    dims: 1\n",
    "dims-fraction": _CLIP + "    dims: [0.5]\n",
    "dims-string": _CLIP + "    dims: ['1']\n",
    "dims-bool": _CLIP + "    dims: [true]\n",
    "dims-null": _CLIP + "    dims:\n",
    "dims-repeated": _CLIP + "    dims: [1, 1]\n",
    "dims-empty": _CLIP + "    dims: []\n",
    "colocate-int": _CLIP + "    colocate_with_variable: 1\n",
    "colocate-string": _CLIP + "    colocate_with_variable: 'true'\n",
    "use-locking-null": _CLIP + "    use_locking:\n",
    "formula-unknown": _CLIP + "    formula: tf\n",
    "formula-null": _CLIP + "    formula:\n",
    "on-skipped-steps-string": "version: 1\nguard:\n" + _CLIP[11:] + "    on_skipped_steps: 'no'\n",
    "on-skipped-steps-false-unguarded": _CLIP + "    on_skipped_steps: false\n",
    "guard-when-unknown": "version: 1\nguard:\n  when: nan\n",
    "guard-granularity-unknown": "version: 1\nguard:\n  granularity: rows\n",
    "guard-init-op-without-counters": "version: 1\nguard: {init_op: init}\n",
    "guard-counters-string": "version: 1\nguard: {counters: 'yes'}\n",
    "guard-scope-unknown": "version: 1\nguard:\n  when: nonfinite\n  scope: steps\n",
    "guard-step-scope-without-when": "version: 1\nguard:\n  scope: step\n",
    "guard-step-scope-zero": "version: 1\nguard:\n  when: zero\n  scope: step\n",
    # global_norm_clip
    "global-norm-null": "version: 1\nglobal_norm_clip:\n",
    "global-norm-list": "version: 1\nglobal_norm_clip: [1]\n",
    "global-norm-missing-clip-norm": "version: 1\nglobal_norm_clip:\n  variables: ['*']\n",
    "clip-norm-zero": "version: 1\nglobal_norm_clip: {clip_norm: 0}\n",
    "clip-norm-negative": "version: 1\nglobal_norm_clip: {clip_norm: -2}\n",
    "clip-norm-bool": "version: 1\nglobal_norm_clip: {clip_norm: false}\n",
    "global-norm-variables-empty": _GNC + "  variables: []\n",
    "global-norm-exclude-mapping": _GNC + "  exclude: {a: 1}\n",
    # lower
    "lower-string": "version: 1\nguard:\nlower: 'yes'\n",
    "lower-int": "version: 1\nguard:\nlower: 1\n",
    "lower-null": "version: 1\nguard:\nlower:\n",
    # updates
    "updates-mapping": "version: 1\nlower: true\nupdates: {variable: W, gradient: dW, updated: W_new}\n",
    "updates-null": "version: 1\nlower: true\nupdates:\n",
    "update-string": "version: 1\nlower: true\nupdates: [W]\n",
    "update-missing-variable": "version: 1\nlower: true\nupdates:\n  - {gradient: dW, updated: W_new}\n",
    "update-missing-gradient": "version: 1\nlower: true\nupdates:\n  - {variable: W, updated: W_new}\n",
    "update-missing-updated": "version: 1\nlower: true\nupdates:\n  - {variable: W, gradient: dW}\n",
    "update-variable-empty": "version: 1\nlower: true\nupdates:\n  - {variable: '', gradient: dW, updated: W_new}\n",
    "update-gradient-int": "version: 1\nlower: true\nupdates:\n  - {variable: W, gradient: 1, updated: W_new}\n",
    "update-updated-list": "version: 1\nlower: true\nupdates:\n  - {variable: W, gradient: dW, updated: [W_new]}\n",
    "state-mapping": _UPD + "    state: {m: m_new}\n",
    "state-flat": _UPD + "    state: [m, m_new]\n",
    "state-pair-of-one": _UPD + "    state: [[m]]\n",
    "state-pair-of-three": _UPD + "    state: [[m, m_new, m2]]\n",
    "state-pair-empty": _UPD + "    state: [[]]\n",
    "state-pair-int": _UPD + "    state: [[m, 1]]\n",
    "state-pair-empty-string": _UPD + "    state: [['', m_new]]\n",
    "state-null": _UPD + "    state:\n",
}


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_schema_and_loader_reject(text: str) -> None:
    assert not schema_accepts(text)
    assert not loader_accepts(text)


# What the schema cannot see (module docstring): the schema accepts, the loader refuses.
ACCEPTED_DIVERGENCES = {
    "invalid-regex": "version: 1\nguard:\n  variables: ['re:(']\n",
    "repeated-key": "version: 1\nguard: {}\nguard: {variables: [a]}\n",
    "merge-key": "version: 1\n<<: {guard: {}}\n",
    "version-integral-float": "version: 1.0\nguard:\n",
    "dims-integral-float": _CLIP + "    dims: [1.0]\n",
    "max-norm-inf": "version: 1\nclip:\n  - {variables: [a], max_norm: .inf}\n",
    "clip-norm-nan": "version: 1\nglobal_norm_clip: {clip_norm: .nan}\n",
    "max-norm-beyond-every-float": "version: 1\nclip:\n  - {variables: [a], max_norm: 1" + "0" * 400 + "}\n",
}


@pytest.mark.parametrize("text", ACCEPTED_DIVERGENCES.values(), ids=ACCEPTED_DIVERGENCES.keys())
def test_accepted_divergences(text: str) -> None:
    assert schema_accepts(text)
    assert not loader_accepts(text)


# YAML's null is an empty guard, however it is spelled; a string is not.
NULL_GUARDS = [
    pytest.param("version: 1\nguard:\n", True, id="guard-empty"),
    pytest.param("version: 1\nguard: ~\n", True, id="guard-tilde"),
    pytest.param("version: 1\nguard: NULL\n", True, id="guard-NULL"),
    pytest.param("version: 1\nguard: Null\n", True, id="guard-Null"),
    pytest.param("version: 1\nguard: ''\n", False, id="guard-quoted-empty-string"),
    pytest.param("version: 1\nguard: 'null'\n", False, id="guard-string-null"),
]


@pytest.mark.parametrize(("text", "valid"), NULL_GUARDS)
def test_guard_null_spellings(text: str, valid: bool) -> None:
    assert schema_accepts(text) is valid
    assert loader_accepts(text) is valid


# --------------------------------------------------------------------------- generated specs

_PATTERNS = ["*", "dense/*", "emb*", "a?c", "[!b]*", "re:emb/part_[0-9]+", "re:.*/bias"]
_NAMES = ["W", "dW", "W_new", "m", "m_new", "layer/0/w", "yes", "1.5", "on"]
_positive = st.one_of(st.integers(1, 10**6), st.floats(min_value=1e-9, max_value=1e9))
_include = st.lists(st.sampled_from(_PATTERNS), min_size=1, max_size=3)
_exclude = st.lists(st.sampled_from(_PATTERNS), max_size=2)
_selector = {"variables": _include, "exclude": _exclude}
_name = st.sampled_from(_NAMES)

_GUARD = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    **_selector,
    "when": st.sampled_from(["nonfinite", "zero_or_nonfinite", "zero"]),
    "scope": st.sampled_from(["variable", "variable", "step"]),
    "granularity": st.sampled_from(["tensor", "row", "element"]),
    "counters": st.booleans(),
}))
_CLIP_GROUP = st.fixed_dictionaries(
    {"variables": _include, "max_norm": _positive},
    optional={
        "exclude": _exclude,
        "dims": st.lists(st.integers(-3, 3), min_size=1, max_size=3, unique=True),
        "colocate_with_variable": st.booleans(),
        "use_locking": st.booleans(),
        "formula": st.sampled_from(["seed", "exact"]),
        "on_skipped_steps": st.sampled_from([True, True, False]),
    },
)
_GLOBAL_NORM_CLIP = st.fixed_dictionaries({"clip_norm": _positive}, optional=_selector)
_UPDATE = st.fixed_dictionaries(
    {"variable": _name, "gradient": _name, "updated": _name},
    optional={"state": st.lists(st.lists(_name, min_size=2, max_size=2), max_size=2)},
)
_TOP = {
    "guard": _GUARD,
    "clip": st.lists(_CLIP_GROUP, min_size=1, max_size=2),
    "global_norm_clip": _GLOBAL_NORM_CLIP,
    "lower": st.booleans(),
    "updates": st.lists(_UPDATE, max_size=2),
}


@st.composite
def _valid(draw: st.DrawFn, rnd: random.Random) -> dict[str, Any]:
    """A document of the spec's structure. Mostly each top-level key is there three times
    in four, so that every field is often there to be changed; now and then a key is rare,
    so that the document asks for nothing."""
    doc = {"version": draw(st.sampled_from(SUPPORTED_VERSIONS))}
    there = rnd.choice([0.75, 0.75, 0.75, 0.75, 0.75, 0.2])
    for key, values in _TOP.items():
        if rnd.random() < there:
            doc[key] = [] if key == "clip" and rnd.random() < 0.2 else draw(values)
    return doc


# Wrong values near each field's rule. Floats in integer fields are never integral, and
# numbers stay within floats (see the module docstring).
_NUMBER = [0, 0.0, -0.0, -1, -2.5, True, False, "1", None, [1]]
_FLAG = [0, 1, "true", "yes", None, []]
_NAME = ["", 0, None, ["W"], True, 1.5]
_PATTERN = ["", 1, None, [], {}, True, 0.5]
# by role: a key, or a key's list items ("dims[]"), or their items ("state[][]")
_WRONG: dict[str, list[Any]] = {
    "version": [0, 2, -1, "1", True, None, 1.5],
    "guard": [True, 1, "*", ["*"]],
    "clip": [None, {}, "a", [None], ["a"], [[]]],
    "clip[]": [None, "a", [], 1, True],
    "global_norm_clip": [None, [], 1.5, "x"],
    "lower": _FLAG,
    "updates": [None, {}, ["W"], [None], [[]]],
    "updates[]": [None, "W", [], 1],
    "variables": [[], "*", None, {}, [""], [1], [None], [["*"]], [True]],
    "variables[]": _PATTERN,
    "exclude": ["*", None, {}, [""], [1], [None]],
    "exclude[]": _PATTERN,
    "max_norm": _NUMBER,
    "clip_norm": _NUMBER,
    "dims": [[], [1, 1], [-1, -1], [0.5], [True], ["0"], [None], [[0]], 1, None, {}],
    "dims[]": [0.5, -1.5, True, False, "0", None, [], {}],
    "colocate_with_variable": _FLAG,
    "use_locking": _FLAG,
    "on_skipped_steps": _FLAG,
    "when": ["Zero", "nan", "", None, 0, ["zero"]],
    "scope": ["steps", "global", "", None, True, ["step"]],
    "formula": ["Exact", "tf", "", None, 1, ["exact"]],
    "granularity": ["rows", "Element", "", None, 0, ["row"]],
    "counters": _FLAG,
    "variable": _NAME,
    "gradient": _NAME,
    "updated": _NAME,
    "state": [None, "m", {}, ["m"], [["m"]], [["m", "n", "o"]], [[]], [["m", ""]], [["m", 1]], [["m", None]]],
    "state[]": [None, "m", {}, [], ["m"], ["m", "n", "o"], ["m", ""], [1, "m"]],
    "state[][]": _NAME,
}


def _wrong_key(role: str) -> str:
    """The key of ``_WRONG`` for a role: "clip/[]/dims/[]" -> "dims[]"."""
    parts = role.split("/")
    items = 0
    while parts and parts[-1] == "[]":
        parts.pop()
        items += 1
    return (parts[-1] if parts else "") + "[]" * items


_JUNK = [None, True, False, -2, 0, 3, 0.5, -1.5, "", "x", "*", "re:a+", [], {}]
_UNKNOWN_KEYS = ["extra", "Guard", "variable", "variables", "max-norm", "state", "version"]


def _places(node: Any, at: tuple[Any, ...] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Every path in ``node``, grouped by role: the path with list indices as ``[]``."""
    out = {"/".join(k if isinstance(k, str) else "[]" for k in at): [at]}
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        for role, paths in _places(value, (*at, key)).items():
            out.setdefault(role, []).extend(paths)
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _mutated(doc: Any, rnd: random.Random) -> Any:
    """``doc`` with one change: a field given a wrong value, a mapping an unknown key, a key
    or list item deleted, a list item repeated, or anything replaced by junk. The change is
    drawn first, then the role it applies to, then the place, all uniformly (Hypothesis's
    own draws lean towards the first choice), so that rare fields get their share."""
    doc = copy.deepcopy(doc)
    places = _places(doc)
    suits = {
        "wrong": lambda role, v: _wrong_key(role) in _WRONG,
        "add-key": lambda role, v: isinstance(v, dict),
        "delete": lambda role, v: role != "",
        "repeat": lambda role, v: isinstance(v, list) and bool(v),
        "junk": lambda role, v: True,
    }
    change = rnd.choice(["wrong", "wrong", "wrong", "add-key", "delete", "repeat", "junk"])
    fit = {r: [p for p in paths if suits[change](r, _at(doc, p))] for r, paths in places.items()}
    roles = sorted(r for r, paths in fit.items() if paths)
    if not roles:
        change, fit, roles = "junk", places, sorted(places)
    role = rnd.choice(roles)
    path = rnd.choice(fit[role])
    target = _at(doc, path)
    if change == "wrong":
        _at(doc, path[:-1])[path[-1]] = copy.deepcopy(rnd.choice(_WRONG[_wrong_key(role)]))
    elif change == "add-key":
        target[rnd.choice(_UNKNOWN_KEYS)] = copy.deepcopy(rnd.choice(_JUNK))
    elif change == "delete":
        del _at(doc, path[:-1])[path[-1]]
    elif change == "repeat":
        target.append(copy.deepcopy(target[-1]))
    elif path:
        _at(doc, path[:-1])[path[-1]] = copy.deepcopy(rnd.choice(_JUNK))
    else:
        doc = copy.deepcopy(rnd.choice(_JUNK))
    return doc


@st.composite
def spec_documents(draw: st.DrawFn) -> str:
    """Spec text: a document of the spec's structure, changed in up to two places, dumped
    in block or flow style."""
    rnd = draw(st.randoms(use_true_random=True))
    doc = draw(_valid(rnd))
    for _ in range(rnd.choice([0, 1, 1, 1, 1, 2])):
        doc = _mutated(doc, rnd)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=rnd.choice([False, True, None]))


def test_schema_agrees_with_loader_on_generated_specs() -> None:
    verdicts: Counter[bool] = Counter()

    @settings(max_examples=1000, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(spec_documents())
    def agree(text: str) -> None:
        doc = yaml.safe_load(text)
        accepted = loader_accepts(text)
        assert SPEC.is_valid(doc) == accepted, text
        verdicts[accepted] += 1

    agree()
    assert min(verdicts.values()) >= 250, verdicts  # both answers, often


# --------------------------------------------------------------------------- reports


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_report_of_a_real_rewrite_validates(case: Path, tmp_path: Path) -> None:
    src = next(case.glob("input.*"))
    out = tmp_path / f"out{src.suffix}"
    rewrite_file(src, case / "spec.yaml", output=out, report_path=tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    REPORT.validate(report)
    assert report["changed"] and report["sites"] and report["output"] == str(out)

    rewrite_file(out, case / "spec.yaml", output=tmp_path / f"again{src.suffix}", report_path=tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    REPORT.validate(again)
    assert not again["changed"] and again["note"]


def _report(mode: str, output: str | None, verified: str | None) -> dict[str, Any]:
    report = Report(
        input="step.onnx", format="ONNX", mode=mode, output=output, changed=True,
        sites=[SiteEntry("W", "Adam 'opt'[0]", "Adam", False, "", ["global_norm_clip", "guard", "clip[0]", "lower"])],
        skipped=[SkipEntry("Adam #3", None, "inside a subgraph of If 'cond'; updates in subgraphs are not rewritten")],
        nodes_added=12, nodes_changed=1, verified=verified,
    )
    return json.loads(report.to_json())


@pytest.mark.parametrize(
    ("mode", "output", "verified"),
    [("write", "step.rewritten.onnx", None), ("write", None, None), ("dry-run", None, None), ("check", None, None),
     ("write", "step.rewritten.onnx", "ran one step in onnxruntime 1.31.0: 4 of 4 outputs finite")],
)
def test_report_modes_validate(mode: str, output: str | None, verified: str | None) -> None:
    REPORT.validate(_report(mode, output, verified))


@pytest.mark.parametrize("mode", ["dry-run", "check"])
def test_only_a_written_report_is_verified(mode: str) -> None:
    """--verify runs the written graph, so it cannot combine with --dry-run or --check."""
    assert not REPORT.is_valid(_report(mode, None, "ran one step in onnxruntime 1.31.0: 4 of 4 outputs finite"))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda r: r.update(extra=1), id="extra-key"),
        pytest.param(lambda r: r["counts"].update(lowered=1), id="extra-count"),
        pytest.param(lambda r: r["sites"][0].update(extra=1), id="extra-site-key"),
        pytest.param(lambda r: r["skipped"][0].update(extra=1), id="extra-skip-key"),
        pytest.param(lambda r: r.pop("verified"), id="missing-key"),
        pytest.param(lambda r: r.update(mode="apply"), id="unknown-mode"),
        pytest.param(lambda r: r.update(mode="dry-run"), id="dry-run-with-output"),
        pytest.param(lambda r: r.update(schema="optrewrite.report/2"), id="other-schema"),
        pytest.param(lambda r: r["sites"][0]["inserted"].append("fold"), id="unknown-action"),
        pytest.param(lambda r: r.update(nodes_added=-1), id="negative-count"),
    ],
)
def test_report_schema_is_closed(change: Any) -> None:
    report = _report("write", "step.rewritten.onnx", None)
    change(report)
    assert not REPORT.is_valid(report)
