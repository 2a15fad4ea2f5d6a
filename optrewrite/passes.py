"""The rewrite passes as the spec, the report and explain know them, in the order they run.

One ordered pipeline serves every format::

    global_norm_clip  ->  guard  ->  clip  ->  lower

1. ``global_norm_clip`` (scope "step"): runs once over every selected site's gradient;
2. ``guard``, ``clip``, ``lower`` (scope "site"): run site by site, each site through all of
   them before the next, so that a site's inserted nodes stay together in the output.

A :class:`PassKind` here is format-neutral: which spec rules it contributes (what it selects,
with which parameters), and how the report counts it. Each format implements the kinds it
supports in its ``passes`` package (``REGISTRY``, name -> :class:`FormatPass`); a spec that
asks a format for a kind it lacks is refused before the graph is read (the format's
``check_request``). The report's
action names and counts, explain's rules, the report schema's action list and the plan
digest all come from :data:`PASSES`.

The plan digest is one rule for every format: a hash of each site's resolved actions with
their parameters, so re-spelling a pattern that selects the same variables is the same plan.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

from optrewrite.core import Skip
from optrewrite.spec import Selector, Spec

S = TypeVar("S")


@dataclass(frozen=True)
class Rule:
    """One thing a spec asks a pass to do, at the sites its selector matches."""

    pass_name: str
    label: str  # the action as the report lists it: "guard", "clip[0]"
    selector: Selector | None  # None: every site the pass applies to
    detail: str  # explain's note on the parameters: " (max_norm 1, dims [1])"
    plan: str  # the label with every parameter, as the plan digest records it
    options: Any = None  # what the pass implementation reads (a ClipGroup, a clip norm)
    source: str = ""  # the spec file, for errors that blame it


class PassKind(Protocol):
    name: str  # as the report names its actions: "guard", "clip[0]"
    module: str  # the module of each format's ``passes`` package that implements it
    scope: str  # "step": once over all selected sites; "site": site by site
    count: str | None  # the report's key counting the sites it touched
    summary: str | None  # how the summary line words that count
    count_doc: str | None  # what the count means, for the report's JSON Schema
    indexed: bool  # its actions are numbered by spec entry: "clip[0]", "clip[1]"

    def rules(self, spec: Spec, *, lower: bool) -> list[Rule]: ...


@dataclass(frozen=True)
class _GlobalNormClip:
    name: str = "global_norm_clip"
    module: str = "global_norm_clip"
    scope: str = "step"
    count: str | None = "global_norm_clipped"
    summary: str | None = "global-norm clipped"
    count_doc: str | None = "Sites whose gradient takes part in the global-norm clip."
    indexed: bool = False

    def rules(self, spec: Spec, *, lower: bool) -> list[Rule]:
        gnc = spec.global_norm_clip
        if gnc is None:
            return []
        return [Rule(self.name, self.name, gnc.select, f" (clip_norm {gnc.clip_norm:g})", self.name, gnc.clip_norm)]


_GUARD_DEFAULTS: dict[str, object] = {"when": "zero", "scope": "variable", "granularity": "tensor", "counters": False}


@dataclass(frozen=True)
class _Guard:
    name: str = "guard"
    module: str = "guard_zero_grad"
    scope: str = "site"
    count: str | None = "guarded"
    summary: str | None = "guarded"
    count_doc: str | None = "Sites where an all-zero-gradient guard was inserted."
    indexed: bool = False

    def rules(self, spec: Spec, *, lower: bool) -> list[Rule]:
        guard = spec.guard
        if guard is None:
            return []
        # the original rule's plan text predates the options: each appears only when it is not the default
        options = [(k, v) for k, v in (("when", guard.when), ("scope", guard.scope), ("granularity", guard.granularity),
                                       ("counters", guard.counters)) if v != _GUARD_DEFAULTS[k]]
        detail = f" ({', '.join(f'{k} {v}' for k, v in options)})" if options else ""
        plan = " ".join([self.name, *(f"{k}={v}" for k, v in options)])
        return [Rule(self.name, self.name, guard.select, detail, plan, guard)]


@dataclass(frozen=True)
class _Clip:
    name: str = "clip"
    module: str = "clip_by_norm"
    scope: str = "site"
    count: str | None = "clipped"
    summary: str | None = "clipped"
    count_doc: str | None = "Sites where at least one clip-by-norm group was inserted."
    indexed: bool = True

    def rules(self, spec: Spec, *, lower: bool) -> list[Rule]:
        out = []
        for g in spec.clip:
            dims = list(g.dims) if g.dims is not None else None
            plan = (f"{g.field} max_norm={g.max_norm!r} dims={dims} "
                    f"colocate={g.colocate_with_variable} use_locking={g.use_locking}")
            detail = f"max_norm {g.max_norm:g}, dims {'all' if dims is None else dims}"
            # each option appears only when it is not the default, so older plans keep their digest
            if g.formula != "seed":
                plan += f" formula={g.formula}"
                detail += f", {g.formula} formula"
            if not g.on_skipped_steps:
                plan += " on_skipped_steps=False"
                detail += ", not on skipped steps"
            detail = f" ({detail})"
            out.append(Rule(self.name, g.field, g.select, detail, plan, g))
        return out


@dataclass(frozen=True)
class _Lower:
    name: str = "lower"
    module: str = "lower_training_ops"
    scope: str = "site"
    count: str | None = None
    summary: str | None = None
    count_doc: str | None = None
    indexed: bool = False

    def rules(self, spec: Spec, *, lower: bool) -> list[Rule]:
        return [Rule(self.name, self.name, None, "", self.name)] if lower or spec.lower else []


PASSES: tuple[PassKind, ...] = (_GlobalNormClip(), _Guard(), _Clip(), _Lower())
BY_NAME = {p.name: p for p in PASSES}


def action_pattern() -> str:
    """A regular expression of every action name the report may list (``clip[i]`` for groups)."""
    names = "|".join(k.name + (r"\[[0-9]+\]" if k.indexed else "") for k in PASSES)
    return f"^({names})$"


def format_registry(package: str) -> dict[str, FormatPass[Any, Any]]:
    """A format's passes: for each kind of :data:`PASSES`, the ``PASS`` of the module
    ``<package>.<kind.module>`` where the format has one; a kind without is not available
    for that format's graphs."""
    import importlib  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    registry: dict[str, FormatPass[Any, Any]] = {}
    for kind in PASSES:
        name = f"{package}.{kind.module}"
        if importlib.util.find_spec(name) is not None:
            registry[kind.name] = importlib.import_module(name).PASS
    return registry


def pass_of(label: str) -> str:
    """The pass an action name belongs to: ``clip[1]`` -> ``clip``."""
    return label.partition("[")[0]


def rules(spec: Spec, *, lower: bool = False) -> list[Rule]:
    """Every rule of the spec, in pipeline order."""
    return [replace(r, source=spec.source) for p in PASSES for r in p.rules(spec, lower=lower)]


@dataclass(frozen=True)
class Selection(Generic[S]):
    """What the spec asks at one update site: its actions, in pipeline order."""

    site: S
    actions: tuple[Rule, ...]

    @property
    def touched(self) -> bool:
        return bool(self.actions)

    @property
    def labels(self) -> list[str]:
        """The action names, as the report lists them."""
        return [a.label for a in self.actions]

    def of(self, pass_name: str) -> list[Rule]:
        return [a for a in self.actions if a.pass_name == pass_name]

    def has(self, pass_name: str) -> bool:
        return any(a.pass_name == pass_name for a in self.actions)


def select(site: S, variable: str, spec_rules: Sequence[Rule], *, applies: Sequence[str] | None = None) -> Selection[S]:
    """The rules that select ``variable``; ``applies`` (None: all) limits the passes that can
    act on this site at all (an ONNX site written in plain ops has no training op to lower)."""
    chosen = tuple(r for r in spec_rules
                   if (applies is None or r.pass_name in applies)
                   and (r.selector is None or r.selector.matches(variable)))
    return Selection(site=site, actions=chosen)


def explain_rules(variable: str, spec_rules: Sequence[Rule], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """Which rules select ``variable`` (with the pattern that matched), and which exclude it;
    a rule without a selector is named when the site got its action (``labels``)."""
    chosen: list[str] = []
    passed: list[str] = []
    for r in spec_rules:
        if r.selector is None:
            if r.label in labels:
                chosen.append(r.label)
            continue
        include, exclude = r.selector.why(variable)
        if include is None:
            continue
        if exclude is not None:
            passed.append(f"{r.label}: excluded by {exclude!r}")
        else:
            chosen.append(f"{r.label}: {include!r}{r.detail}")
    return chosen, passed


def plan_digest(selections: Sequence[Selection[Any]], spec: Spec) -> str:
    """A digest of every site's actions with their parameters, recorded in the output."""
    gnc = spec.global_norm_clip
    plan: dict[str, Any] = {
        "format": 1,
        "global_norm_clip": gnc.clip_norm if gnc is not None else None,
        "sites": [[sel.site.key, sel.site.variable, [a.plan for a in sel.actions]] for sel in selections],
    }
    if spec.updates:
        plan["updates"] = [[u.variable, u.gradient, u.updated, [list(s) for s in u.state]] for u in spec.updates]
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


@dataclass
class PassResult:
    """What one run of a pass did: the actions it inserted, per site key, the sites it
    left alone with the reason, and the state (variables, state inputs) it added per site."""

    inserted: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    state: dict[str, list[str]] = field(default_factory=dict)  # per site key: the state it added (counters)


E = TypeVar("E", contravariant=True)
St = TypeVar("St", contravariant=True)


class FormatPass(Protocol[E, St]):
    """A pass as a format implements it: edits through the format's editor ``E`` on the
    per-site states ``St`` it is given (one for a "site" pass, every selected one for a
    "step" pass), reading its options from each state's selection. ``prepare`` runs once
    over every state a "site" pass will run on, before the first of them: what spans the
    step (the guard's step-wide non-finite test) is built there."""

    name: str

    def prepare(self, editor: E, states: Sequence[St]) -> None: ...

    def run(self, editor: E, states: Sequence[St]) -> PassResult: ...


class Pass:
    """A base for format passes that need no step-wide preparation."""

    def prepare(self, editor: Any, states: Sequence[Any]) -> None:
        return None


def run_pipeline(registry: dict[str, FormatPass[Any, Any]], editor: Any, states: Sequence[Any],
                 *, lint: Callable[[Any], None] | None = None) -> PassResult:
    """Run the format's passes over the site states (each with a ``selection``) in pipeline
    order; ``lint(editor)`` after each run. Returns what they did, together."""
    total = PassResult()

    def run(p: FormatPass[Any, Any], chosen: Sequence[Any]) -> None:
        result = p.run(editor, chosen)
        for key, labels in result.inserted.items():
            total.inserted.setdefault(key, []).extend(labels)
        for key, names in result.state.items():
            total.state.setdefault(key, []).extend(names)
        total.skipped.extend(result.skipped)
        if lint is not None:
            lint(editor)

    for kind in PASSES:
        if kind.scope == "step" and kind.name in registry:
            chosen = [st for st in states if st.selection.has(kind.name)]
            if chosen:
                run(registry[kind.name], chosen)
    site_passes = [registry[k.name] for k in PASSES if k.scope == "site" and k.name in registry]
    for p in site_passes:
        chosen = [st for st in states if st.selection.has(p.name)]
        if chosen:
            p.prepare(editor, chosen)
            if lint is not None:
                lint(editor)
    for st in states:
        for p in site_passes:
            if st.selection.has(p.name):
                run(p, [st])
    return total
