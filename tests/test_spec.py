"""Spec loading and validation: every error names the file, line and field."""
from __future__ import annotations

import pytest

from optrewrite.errors import SpecError
from optrewrite.spec import load_spec, parse_spec

GOOD = """\
version: 1
guard:
  variables: ["*"]
  exclude: ["re:.*/bias"]
clip:
  - variables: ["emb*"]
    dims: [1]
    max_norm: 1.0
  - variables: ["dense/kernel"]
    max_norm: 2
    colocate_with_variable: true
    use_locking: true
global_norm_clip:
  clip_norm: 15.0
"""


def test_good_spec_parses_into_selectors_and_groups() -> None:
    spec = parse_spec(GOOD, "wrap.yaml")
    assert spec.guard is not None
    assert spec.guard.select.matches("dense/kernel")
    assert not spec.guard.select.matches("dense/bias")
    assert [g.max_norm for g in spec.clip] == [1.0, 2.0]
    assert spec.clip[0].dims == (1,) and spec.clip[1].dims is None
    assert spec.clip[1].colocate_with_variable and spec.clip[1].use_locking
    assert spec.global_norm_clip is not None and spec.global_norm_clip.select.matches("anything")


def test_regex_selector_matches_whole_name() -> None:
    spec = parse_spec('version: 1\nguard:\n  variables: ["re:emb/part_[0-9]+"]\n')
    assert spec.guard is not None
    assert spec.guard.select.matches("emb/part_12")
    assert not spec.guard.select.matches("emb/part_1/Adam")


def test_empty_guard_key_means_all_variables() -> None:
    spec = parse_spec("version: 1\nguard:\n")
    assert spec.guard is not None and spec.guard.select.matches("x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\nguard:\n", "w.yaml:1: version: unsupported version 2"),
        ("guard:\n", "w.yaml:1: missing required key 'version'"),
        ("version: 1\nguardd: {}\n", "w.yaml:2: guardd: unknown key"),
        ("version: 1\nguard:\n  variables: x\n", "w.yaml:3: guard.variables: must be a list"),
        ("version: 1\nguard:\n  variables: ['re:(']\n", "w.yaml:3: guard.variables[0]: invalid regular expression"),
        ("version: 1\nclip:\n  - variables: [a]\n    max_norm: 0\n", "w.yaml:4: clip[0].max_norm: must be a positive number"),
        ("version: 1\nclip:\n  - variables: [a]\n    max_norm: -1.5\n", "clip[0].max_norm: must be a positive number, got -1.5"),
        ("version: 1\nclip:\n  - variables: [a]\n    max_norm: .inf\n", "clip[0].max_norm: must be a positive number"),
        ("version: 1\nclip:\n  - variables: [a]\n    max_norm: yes\n", "clip[0].max_norm: must be a positive number, got True"),
        ("version: 1\nclip:\n  - variables: [a]\n", "w.yaml:3: clip[0]: missing required key 'max_norm'"),
        ("version: 1\nclip:\n  - max_norm: 1\n", "clip[0]: missing required key 'variables'"),
        ("version: 1\nclip:\n  - variables: [a]\n    max_norm: 1\n    dims: [1, 1]\n", "clip[0].dims: repeats a dim"),
        ("version: 1\nclip:\n  - variables: [a]\n    max_norm: 1\n    use_locking: 1\n", "clip[0].use_locking: must be true or false"),
        ("version: 1\nglobal_norm_clip:\n  variables: ['*']\n", "global_norm_clip: missing required key 'clip_norm'"),
        ("version: 1\n", "asks for nothing"),
        ("version: 1\nguard: [1\n", "w.yaml:3: invalid YAML"),
        ("", "w.yaml: the spec is empty"),
        ("- 1\n", "w.yaml:1: must be a mapping"),
    ],
)
def test_spec_errors_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "w.yaml")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unsafe_yaml_tags_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "w.yaml"
    path.write_text("version: 1\nguard: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(SpecError):
        load_spec(path)


def test_bind_checks_selectors_and_dims_against_the_graph() -> None:
    spec = parse_spec(GOOD, "w.yaml")
    spec.bind({"emb": 2, "dense/kernel": 2, "dense/bias": 1})
    with pytest.raises(SpecError, match=r"w.yaml:6: clip\[0\]: selects no variable"):
        spec.bind({"dense/kernel": 2})
    bad = parse_spec("version: 1\nclip:\n  - variables: [b]\n    dims: [1]\n    max_norm: 1\n", "w.yaml")
    with pytest.raises(SpecError, match=r"clip\[0\].dims: dim 1 is out of range for variable 'b' of rank 1"):
        bad.bind({"b": 1})
    with pytest.raises(SpecError, match="not rewritable: because"):
        bad.bind({"a": 1}, {"b": "because"})
