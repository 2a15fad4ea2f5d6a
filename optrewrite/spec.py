"""The rewrite spec: YAML, safe-loaded into frozen dataclasses and validated up front.

Every error names the file, the line where YAML gives one, and the field, e.g.
``wrap.yaml:7: clip[0].max_norm: must be a positive number, got -1``.

Validation happens in two steps: :func:`load_spec` checks everything that needs no graph;
:meth:`Spec.bind` checks the selectors and dims against the variables a graph holds.

A spec is untrusted input, so its size is bounded (each bound a SpecError naming the field):
the file holds at most :data:`MAX_SPEC_BYTES`; YAML at most :data:`MAX_YAML_NODES` nodes,
an alias counted each time it is used (so an alias bomb is refused early); a pattern at most
:data:`MAX_PATTERN_CHARS` characters and a spec at most :data:`MAX_PATTERNS` of them; at most
:data:`MAX_CLIP_GROUPS` clip groups and :data:`MAX_UPDATES` ``updates:`` entries, each naming
tensors of at most :data:`MAX_NAME_CHARS` characters and at most :data:`MAX_STATE_PAIRS`
state pairs; ``dims`` at most :data:`MAX_DIMS`. Each distinct pattern text is compiled once
per spec, however often aliases repeat it.
"""
from __future__ import annotations

import contextvars
import fnmatch
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from optrewrite.errors import SpecError, quoted, shorten

SUPPORTED_VERSIONS = (1,)
GUARD_WHEN = ("zero", "nonfinite", "zero_or_nonfinite")  # when the guard skips an update
GUARD_SCOPES = ("variable", "step")  # whose gradients the non-finite test looks at
GUARD_GRANULARITIES = ("tensor", "row", "element")  # what the guard keeps: the variable, rows, elements
CLIP_FORMULAS = ("seed", "exact")  # how a clip computes and writes the clipped value
# The positive normal range of each float type a norm may be written in: a norm outside it
# overflows to inf or loses its precision (and 1/norm overflows) once it is a constant of that type.
NORMAL_RANGE = {
    "float16": (6.103515625e-05, 65504.0),
    "bfloat16": (1.1754943508222875e-38, 3.3895313892515355e38),
    "float32": (1.1754943508222875e-38, 3.4028234663852886e38),
    "float64": (2.2250738585072014e-308, 1.7976931348623157e308),
}

# Bounds of a spec (module docstring): generous for any spec written by hand or generated
# for a real model, small enough that reading one takes seconds at most.
MAX_SPEC_BYTES = 1 << 20  # the spec file; a spec is a few kilobytes, updates for ~3,000 sites fit
MAX_YAML_NODES = 250_000  # scalars, lists and mappings, an alias counted each time it is used
MAX_PATTERN_CHARS = 1_000  # one pattern (glob or "re:" regex); list several instead of a longer one
MAX_PATTERNS = 10_000  # include and exclude patterns of all selectors together
MAX_CLIP_GROUPS = 1_000
MAX_UPDATES = 10_000  # entries of updates:
MAX_STATE_PAIRS = 16  # state pairs of one updates: entry
MAX_NAME_CHARS = 4_096  # a tensor name in updates:
MAX_DIMS = 254  # clip dims: TensorFlow's largest rank


@dataclass(frozen=True)
class Pattern:
    """One selector entry: a shell-style glob, or a regular expression after ``re:``."""

    text: str
    line: int | None
    _regex: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None


@dataclass(frozen=True)
class Selector:
    """Variables whose name matches any of ``include`` and none of ``exclude``."""

    include: tuple[Pattern, ...]
    exclude: tuple[Pattern, ...]
    field: str
    line: int | None

    def matches(self, name: str) -> bool:
        include, exclude = self.why(name)
        return include is not None and exclude is None

    def why(self, name: str) -> tuple[str | None, str | None]:
        """The first include pattern and the first exclude pattern ``name`` matches (None: none)."""
        return (next((p.text for p in self.include if p.matches(name)), None),
                next((p.text for p in self.exclude if p.matches(name)), None))

    def select(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if self.matches(n)]


@dataclass(frozen=True)
class GuardSpec:
    """The all-zero-gradient guard (MultitaskOptimizerWrapper), and when it skips an update.

    ``when``: ``zero`` (the gradient has no non-zero element; the default and the original
    wrapper's rule), ``nonfinite`` (some element is NaN or infinite: the loss-scale
    optimizers' rule), or ``zero_or_nonfinite`` (either).

    ``scope``: ``variable`` (each variable's own gradient decides) or ``step`` (the non-finite
    test spans every selected gradient: one NaN or infinity skips every selected update that
    step, as the loss-scale optimizers skip a whole step; the zero test stays per variable).
    ``step`` needs a ``when`` with a non-finite test.

    ``granularity``: ``tensor`` (the whole update is skipped or not), ``row`` (each row along
    dim 0 whose gradient slice the rule skips keeps its values in the variable and its slots;
    LazyAdam), ``element`` (each element likewise; OLMo's selective updates). A sparse
    gradient's rows or elements it does not touch count as zero.

    ``counters``: per guarded variable and reason (``zero``, ``nonfinite``, as ``when``
    tests), an int64 count of the steps on which that test fired for the variable: state the
    rewrite adds to the graph (TensorFlow: a resource variable set to 0 by ``init_op``,
    default the NoOp ``init``; ONNX: an input with a 0 initializer and its next value as an
    output).
    """

    select: Selector
    when: str = "zero"
    scope: str = "variable"
    granularity: str = "tensor"
    line: int | None = None  # of granularity, for errors that need the graph
    counters: bool = False
    init_op: str | None = None  # TensorFlow graphs: the op that initializes the counters
    counters_line: int | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        """The reasons ``when`` skips for, in the order counters are added."""
        return {"zero": ("zero",), "nonfinite": ("nonfinite",), "zero_or_nonfinite": ("zero", "nonfinite")}[self.when]


@dataclass(frozen=True)
class ClipGroup:
    """A post-update clip-by-norm group (VariableClippingOptimizer).

    ``formula``: ``seed`` writes ``v -= v - clip_by_norm(v)`` every step (the original's ops
    and bits); ``exact`` writes only where a norm exceeds ``max_norm``, the clipped value
    itself (``v * (max_norm / norm)``), so a variable within the norm keeps its bits and a
    large one is not cancelled away. ``on_skipped_steps``: whether the clip also runs on a
    step whose update the guard skipped (the original clips every step); ``False`` leaves
    such a variable untouched.
    """

    index: int
    select: Selector
    max_norm: float
    dims: tuple[int, ...] | None  # None: the norm over the whole variable
    colocate_with_variable: bool
    use_locking: bool
    line: int | None
    formula: str = "seed"
    on_skipped_steps: bool = True

    @property
    def field(self) -> str:
        return f"clip[{self.index}]"


@dataclass(frozen=True)
class GlobalNormClip:
    """Clip the selected gradients by their global norm (clip_gradients_by_global_norm)."""

    clip_norm: float
    select: Selector


@dataclass(frozen=True)
class UpdateSiteSpec:
    """An explicit update site of a decomposed ONNX training step."""

    variable: str
    gradient: str
    updated: str
    state: tuple[tuple[str, str], ...]
    line: int | None


_NOT_MEANING = ("source", "line", "counters_line")  # where a rule was written, not what it asks


def fingerprint(spec: Spec) -> str:
    """A digest of what ``spec`` asks: every rule and option, but not the file it came from,
    its line numbers, comments or layout (two specs with one fingerprint rewrite any graph
    alike). Patterns count as written: two spellings that select the same variables differ."""

    def plain(value: Any) -> Any:
        if isinstance(value, Pattern):
            return value.text
        if hasattr(value, "__dataclass_fields__"):
            return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__
                    if name not in _NOT_MEANING and not name.startswith("_")}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return hashlib.sha256(json.dumps(plain(spec), sort_keys=True, allow_nan=True).encode()).hexdigest()


class UnmatchedSelector(SpecError):
    """A selector of the spec matches no variable with an optimizer update."""


@dataclass(frozen=True)
class Spec:
    source: str
    version: int
    guard: GuardSpec | None
    clip: tuple[ClipGroup, ...]
    global_norm_clip: GlobalNormClip | None
    lower: bool
    updates: tuple[UpdateSiteSpec, ...]

    def without(self, field: str) -> Spec:
        """This spec without the rule whose selector is ``field`` (``guard``, ``clip[i]``,
        ``global_norm_clip``); the other clip groups keep their numbers."""
        return replace(
            self,
            guard=None if self.guard is not None and self.guard.select.field == field else self.guard,
            clip=tuple(g for g in self.clip if g.select.field != field),
            global_norm_clip=(None if self.global_norm_clip is not None and self.global_norm_clip.select.field == field
                              else self.global_norm_clip),
        )

    def selectors(self) -> list[Selector]:
        out = [g.select for g in self.clip]
        if self.guard is not None:
            out.insert(0, self.guard.select)
        if self.global_norm_clip is not None:
            out.append(self.global_norm_clip.select)
        return out

    def bind(
        self,
        ranks: Mapping[str, int | None],
        skipped: Mapping[str, str] | None = None,
        dtypes: Mapping[str, str] | None = None,
    ) -> None:
        """Check the spec against a graph's variables (name -> rank, None when unknown).

        ``skipped`` maps variables whose update cannot be rewritten to the reason, so that a
        selector matching only those says why. ``dtypes`` maps variables to the name of their
        float type (a key of :data:`NORMAL_RANGE`), in which their norms become constants.
        Raises SpecError when a selector matches no variable, a clip dim is out of range or
        two dims name the same axis, or a norm is not a normal number of a selected variable's type.
        """
        names = sorted(ranks)
        for sel in self.selectors():
            if not sel.select(names):
                shown = shorten(", ".join(p.text for p in sel.include))
                message = f"selects no variable with an optimizer update ({shown})"
                hidden = sel.select(sorted(skipped or {}))
                if hidden:
                    message += f"; {hidden[0]!r} is not rewritable: {(skipped or {})[hidden[0]]}"
                raise UnmatchedSelector(self.source, sel.field, message, sel.line)
        for group in self.clip:
            for name in group.select.select(names):
                rank = ranks[name]
                if group.dims is None or rank is None:
                    if group.dims is None and rank is None:
                        raise SpecError(
                            self.source,
                            f"{group.field}.dims",
                            f"variable {name!r} has an unknown rank: give dims explicitly",
                            group.line,
                        )
                    continue
                bad = [d for d in group.dims if not -rank <= d < rank]
                if bad:
                    raise SpecError(
                        self.source,
                        f"{group.field}.dims",
                        f"dim {shorten(str(bad[0]), 24)} is out of range for variable {name!r} of rank {rank}",
                        group.line,
                    )
                axes = [d % rank for d in group.dims]
                if len(set(axes)) != len(axes):
                    raise SpecError(
                        self.source,
                        f"{group.field}.dims",
                        f"{list(group.dims)} names an axis twice for variable {name!r} of rank {rank}",
                        group.line,
                    )
        guard = self.guard
        if guard is not None and guard.granularity == "row":
            for name in guard.select.select(names):
                if ranks[name] is None or ranks[name] == 0:
                    what = "an unknown rank" if ranks[name] is None else "no rows (a scalar)"
                    raise SpecError(self.source, "guard.granularity",
                                    f"row needs variables with rows; {name!r} has {what}", guard.line)
        for name, dtype in sorted((dtypes or {}).items()):
            norms = [(f"{g.field}.max_norm", g.max_norm, g.line) for g in self.clip if g.select.matches(name)]
            gnc = self.global_norm_clip
            if gnc is not None and gnc.select.matches(name):
                norms.append(("global_norm_clip.clip_norm", gnc.clip_norm, gnc.select.line))
            low, high = NORMAL_RANGE[dtype]
            for where, value, line in norms:
                if not low <= value <= high:
                    raise SpecError(
                        self.source,
                        where,
                        f"{value!r} is outside the range of {dtype} ({low!r} to {high!r}), "
                        f"the type of variable {name!r}",
                        line,
                    )


# --------------------------------------------------------------------------- loading


class _Node:
    """A composed YAML node with its source position, converted on demand."""

    def __init__(self, source: str, node: yaml.Node, path: str) -> None:
        self.source = source
        self.node = node
        self.path = path

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def fail(self, message: str) -> SpecError:
        return SpecError(self.source, self.path, message, self.line)

    def mapping(self, allowed: Sequence[str]) -> dict[str, _Node]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.fail(f"must be a mapping, got {self._kind()}")
        _walked(self, len(self.node.value))
        out: dict[str, _Node] = {}
        for key_node, value_node in self.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{self.path}.{key}" if self.path else str(key)
            if key not in allowed:
                raise SpecError(
                    self.source,
                    shorten(sub),
                    f"unknown key (expected one of: {', '.join(allowed)})",
                    key_node.start_mark.line + 1,
                )
            if key in out:
                raise SpecError(self.source, sub, "duplicate key", key_node.start_mark.line + 1)
            out[key] = _Node(self.source, value_node, sub)
        return out

    def sequence(self, limit: int | None = None, what: str = "entries") -> list[_Node]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.fail(f"must be a list, got {self._kind()}")
        if limit is not None and len(self.node.value) > limit:
            raise self.fail(f"lists {len(self.node.value)} {what}; at most {limit:,} are allowed")
        _walked(self, len(self.node.value))
        return [_Node(self.source, n, f"{self.path}[{i}]") for i, n in enumerate(self.node.value)]

    def scalar(self) -> Any:
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.fail(f"must be a single value, got {self._kind()}")
        parse = _PARSE.get(None)
        # One constructor per spec: it constructs an aliased scalar once. Its stream is empty:
        # a constructor never reads it (a loader over the value would scan it on every call).
        constructor = parse.constructor if parse is not None else yaml.SafeLoader("")
        try:
            return constructor.construct_object(self.node)  # type: ignore[arg-type]
        except yaml.YAMLError as exc:  # an unknown or unsafe tag, bad base64
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise self.fail(f"cannot read {self._kind()}: {shorten(problem)}") from None
        except (ValueError, OverflowError, KeyError):  # !!int 'abc', 4301 digits, !!bool maybe
            raise self.fail(f"cannot read {self._kind()} as {self.node.tag.rsplit(':', 1)[-1]}") from None

    def string(self, limit: int = MAX_NAME_CHARS) -> str:
        value = self.scalar()
        if not isinstance(value, str) or not value:
            raise self.fail(f"must be a non-empty string, got {quoted(value)}")
        if len(value) > limit:
            raise self.fail(f"{quoted(value, 24)} has {len(value):,} characters; at most {limit:,} are allowed")
        return value

    def choice(self, allowed: Sequence[str]) -> str:
        value = self.scalar()
        if value not in allowed or not isinstance(value, str):
            raise self.fail(f"must be one of {', '.join(allowed)}, got {quoted(value)}")
        return value

    def boolean(self) -> bool:
        value = self.scalar()
        if not isinstance(value, bool):
            raise self.fail(f"must be true or false, got {quoted(value)}")
        return value

    def positive(self) -> float:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"must be a positive number, got {quoted(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond every float
            number = math.inf
        if not math.isfinite(number) or number <= 0:
            raise self.fail(f"must be a positive number, got {quoted(value)}")
        return number

    def integer(self) -> int:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"must be an integer, got {quoted(value)}")
        return value

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        return shorten(repr(self.node.value))


class _Parse:
    """What one :func:`parse_spec` shares: the YAML constructor, the compiled patterns by
    their text, and the counts the bounds apply to."""

    def __init__(self) -> None:
        self.constructor = yaml.SafeLoader("")
        self.regexes: dict[str, re.Pattern[str]] = {}
        self.patterns = 0
        self.walked = 0


_PARSE: contextvars.ContextVar[_Parse] = contextvars.ContextVar("optrewrite_spec_parse")


def _walked(node: _Node, count: int) -> None:
    """Count ``count`` more nodes visited; an alias is visited each time it is used."""
    parse = _PARSE.get(None)
    if parse is None:
        return
    parse.walked += count
    if parse.walked > MAX_YAML_NODES:
        raise node.fail(f"the spec has more than {MAX_YAML_NODES:,} YAML nodes (an alias counts each time it is used)")


def _compile(text: str) -> re.Pattern[str]:
    """The regex of a pattern's text; re.error and friends when a ``re:`` one does not compile."""
    return re.compile(text[3:]) if text.startswith("re:") else re.compile(fnmatch.translate(text))


def _pattern(node: _Node) -> Pattern:
    text = node.string(limit=MAX_PATTERN_CHARS)
    parse = _PARSE.get(None)
    if parse is not None:
        parse.patterns += 1
        if parse.patterns > MAX_PATTERNS:
            raise node.fail(f"the spec has more than {MAX_PATTERNS:,} patterns")
    regex = parse.regexes.get(text) if parse is not None else None
    if regex is None:
        try:
            regex = _compile(text)
        except (re.error, RecursionError, OverflowError) as exc:
            problem = exc if isinstance(exc, re.error) else "nested or repeated too deeply"
            raise node.fail(f"invalid regular expression {shorten(repr(text[3:]))}: {problem}") from None
        if parse is not None:
            parse.regexes[text] = regex
    return Pattern(text=text, line=node.line, _regex=regex)


def _selector(parent: dict[str, _Node], owner: _Node, *, default_all: bool) -> Selector:
    if "variables" in parent:
        include = tuple(_pattern(n) for n in parent["variables"].sequence(MAX_PATTERNS, "patterns"))
        if not include:
            raise parent["variables"].fail("must list at least one pattern")
    elif default_all:
        include = (Pattern(text="*", line=owner.line, _regex=re.compile(".*", re.S)),)
    else:
        raise owner.fail("missing required key 'variables'")
    exclude: tuple[Pattern, ...] = ()
    if "exclude" in parent:
        exclude = tuple(_pattern(n) for n in parent["exclude"].sequence(MAX_PATTERNS, "patterns"))
    return Selector(include=include, exclude=exclude, field=owner.path, line=owner.line)


def _guard(node: _Node) -> GuardSpec:
    if isinstance(node.node, yaml.ScalarNode) and node.node.tag == "tag:yaml.org,2002:null":  # "guard:" alone
        node = _Node(node.source, yaml.MappingNode("tag:yaml.org,2002:map", [], node.node.start_mark), node.path)
    keys = node.mapping(["variables", "exclude", "when", "scope", "granularity", "counters", "init_op"])
    when = keys["when"].choice(GUARD_WHEN) if "when" in keys else "zero"
    scope = keys["scope"].choice(GUARD_SCOPES) if "scope" in keys else "variable"
    if scope == "step" and when == "zero":
        raise keys["scope"].fail("step needs a non-finite test: give when: nonfinite or zero_or_nonfinite")
    granularity = keys["granularity"].choice(GUARD_GRANULARITIES) if "granularity" in keys else "tensor"
    counters = keys["counters"].boolean() if "counters" in keys else False
    init_op = keys["init_op"].string() if "init_op" in keys else None
    if init_op is not None and not counters:
        raise keys["init_op"].fail("names the op that initializes the counters; it needs counters: true")
    return GuardSpec(select=_selector(keys, node, default_all=True), when=when, scope=scope,
                     granularity=granularity, line=keys["granularity"].line if "granularity" in keys else node.line,
                     counters=counters, init_op=init_op,
                     counters_line=keys["counters"].line if "counters" in keys else node.line)



def _clip_group(index: int, node: _Node, *, guarded: bool) -> ClipGroup:
    keys = node.mapping(
        ["variables", "exclude", "dims", "max_norm", "colocate_with_variable", "use_locking", "formula",
         "on_skipped_steps"]
    )
    if "max_norm" not in keys:
        raise node.fail("missing required key 'max_norm'")
    dims: tuple[int, ...] | None = None
    if "dims" in keys:
        dims = tuple(n.integer() for n in keys["dims"].sequence(MAX_DIMS, "dims"))
        if not dims:
            raise keys["dims"].fail("must list at least one dim (omit dims for the norm of the whole variable)")
        if len(set(dims)) != len(dims):
            raise keys["dims"].fail(f"repeats a dim: {list(dims)}")
    return ClipGroup(
        index=index,
        select=_selector(keys, node, default_all=False),
        max_norm=keys["max_norm"].positive(),
        dims=dims,
        colocate_with_variable=keys["colocate_with_variable"].boolean()
        if "colocate_with_variable" in keys
        else False,
        use_locking=keys["use_locking"].boolean() if "use_locking" in keys else False,
        line=node.line,
        formula=keys["formula"].choice(CLIP_FORMULAS) if "formula" in keys else "seed",
        on_skipped_steps=_on_skipped_steps(keys, guarded),
    )


def _on_skipped_steps(keys: dict[str, _Node], guarded: bool) -> bool:
    if "on_skipped_steps" not in keys:
        return True
    value = keys["on_skipped_steps"].boolean()
    if not value and not guarded:
        raise keys["on_skipped_steps"].fail("false needs a guard: only the guard skips an update")
    return value


def _global_norm_clip(node: _Node) -> GlobalNormClip:
    keys = node.mapping(["clip_norm", "variables", "exclude"])
    if "clip_norm" not in keys:
        raise node.fail("missing required key 'clip_norm'")
    return GlobalNormClip(
        clip_norm=keys["clip_norm"].positive(), select=_selector(keys, node, default_all=True)
    )


def _update_site(node: _Node) -> UpdateSiteSpec:
    keys = node.mapping(["variable", "gradient", "updated", "state"])
    for required in ("variable", "gradient", "updated"):
        if required not in keys:
            raise node.fail(f"missing required key {required!r}")
    state: list[tuple[str, str]] = []
    for pair in keys["state"].sequence(MAX_STATE_PAIRS, "state pairs") if "state" in keys else []:
        items = pair.sequence()
        if len(items) != 2:
            raise pair.fail("must be a pair [state_input, state_output]")
        state.append((items[0].string(), items[1].string()))
    return UpdateSiteSpec(
        variable=keys["variable"].string(),
        gradient=keys["gradient"].string(),
        updated=keys["updated"].string(),
        state=tuple(state),
        line=node.line,
    )


_TOP_KEYS = ["version", "guard", "clip", "global_norm_clip", "lower", "updates"]


class _Loader(yaml.SafeLoader):
    """PyYAML's own safe loader, composing at most :data:`MAX_YAML_NODES` nodes (aliases
    included): the pure-Python parser takes about 0.1 ms a node."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > MAX_YAML_NODES:
            raise _TooManyNodes(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


class _TooManyNodes(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


# libyaml's parser, where PyYAML has it (its wheels do): some 30 times faster than PyYAML's,
# a spec of MAX_SPEC_BYTES takes it seconds at most; it refuses collections nested 1,000 deep.
# It composes aliases as references, so only the walk over the spec counts their uses.
_FAST_LOADER: type | None = getattr(yaml, "CSafeLoader", None)


def _compose(text: str) -> yaml.Node | None:
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except UnicodeEncodeError:  # a lone surrogate: no file decodes to one
            raise yaml.YAMLError("the spec is not Unicode text") from None
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Parse and validate spec text; raise SpecError naming source, line and field."""
    if len(text) > MAX_SPEC_BYTES:  # characters, each at least one byte in the file
        raise SpecError(source, "", f"the spec has {len(text):,} characters; at most {MAX_SPEC_BYTES:,} are allowed")
    token = _PARSE.set(_Parse())
    try:
        return _parse(text, source)
    finally:
        _PARSE.reset(token)


def compose_yaml(text: str, source: str, what: str = "spec") -> yaml.Node | None:
    """``text`` composed by the safe loader (None for an empty document); a problem is a
    SpecError naming ``source`` and the line. Shared with :mod:`optrewrite.manifest`."""
    try:
        return _compose(text)
    except _TooManyNodes as exc:
        raise SpecError(source, "", f"the {what} has more than {MAX_YAML_NODES:,} YAML nodes "
                        "(an alias counts each time it is used)", exc.line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "maximum nesting depth" in problem:  # libyaml's words
            problem = "collections nested too deeply"
        raise SpecError(source, "", f"invalid YAML: {shorten(problem)}", mark.line + 1 if mark else None) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise SpecError(source, "", "invalid YAML: collections nested too deeply") from None


YamlNode = _Node  # a composed node with its position, as the manifest reads one too


def _parse(text: str, source: str) -> Spec:
    root_node = compose_yaml(text, source)
    if root_node is None:
        raise SpecError(source, "", "the spec is empty")
    root = _Node(source, root_node, "")
    keys = root.mapping(_TOP_KEYS)
    if "version" not in keys:
        raise root.fail("missing required key 'version'")
    version = keys["version"].integer()
    if version not in SUPPORTED_VERSIONS:
        raise keys["version"].fail(
            f"unsupported version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    clip: tuple[ClipGroup, ...] = ()
    if "clip" in keys:
        clip = tuple(_clip_group(i, n, guarded="guard" in keys)
                     for i, n in enumerate(keys["clip"].sequence(MAX_CLIP_GROUPS, "clip groups")))
    spec = Spec(
        source=source,
        version=version,
        guard=_guard(keys["guard"]) if "guard" in keys else None,
        clip=clip,
        global_norm_clip=_global_norm_clip(keys["global_norm_clip"]) if "global_norm_clip" in keys else None,
        lower=keys["lower"].boolean() if "lower" in keys else False,
        updates=tuple(_update_site(n) for n in keys["updates"].sequence(MAX_UPDATES, "updates"))
        if "updates" in keys else (),
    )
    if spec.guard is None and not spec.clip and spec.global_norm_clip is None and not spec.lower:
        raise root.fail("asks for nothing: give at least one of guard, clip, global_norm_clip, lower")
    return spec


def load_spec(path: str | Path, *, read: Callable[[Path], bytes] | None = None) -> Spec:
    """Read and validate a spec file; every problem is a SpecError."""
    p = Path(path)
    try:
        raw = (read or Path.read_bytes)(p)
    except OSError as exc:
        raise SpecError(str(p), "", f"cannot read spec: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(str(p), "", "the spec is not UTF-8 text") from None
    return parse_spec(text, source=str(p))
