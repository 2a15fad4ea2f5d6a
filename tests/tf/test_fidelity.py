"""Rewritten graphs train like the construction-time reference, step by step.

For every optimizer × {ref, resource} variables × {dense, sparse} embedding gradient × spec
variant (guard all; guard all + four chained clip groups; guard all + global-norm clip; all
three on different subsets): the plain two-task graph (tests/tf/model.py) is exported, rewritten by the CLI, and
trained 20 steps with task masks that zero some gradients; the reference graph (the same
model with tests/tf/reference.py wrapping the optimizer) is trained on the same data.

- resource variables: every variable and slot equals the reference's bit for bit, every step;
- ref variables (their reads race with in-place updates, docs/semantics.md#reproducibility):
  close to the reference (rtol 1e-5);
- both, and the reference itself, hold these properties exactly, every step:
  1. a variable whose gradient was all zero keeps its slots (and, unless clipped, its value);
  2. every clipped variable (sparse path: every row touched in the step) is within max_norm;
  3. non-slot state (global_step, beta powers) advances every step as in the plain graph;
- the test could fail: all-zero gradients occur, clip groups and the global-norm clip bite,
  and in some step the plain graph changed a guarded variable or a slot whose gradient was
  all zero (for GradientDescent and Adagrad a zero gradient changes nothing, so there the
  rewritten graph must at least contain the guard's Switch ops).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from . import model
from .reference import ClipGroup, GlobalNormClip, RewriteConfig, Selection

GUARD_ALL = Selection(("*",))
VARIANTS = ("guard", "clip", "global_norm", "mixed")

# FTRL and AdagradDA recompute the weights from their accumulators in the first step, which
# leaves them ~10x smaller: their clip norms are scaled so that clipping still bites.
CLIP_SCALE = {"Ftrl": 0.15, "FtrlShrinkage": 0.15, "AdagradDA": 0.1}


def variant_config(variant: str, optimizer: str) -> RewriteConfig:
    if variant == "guard":
        return RewriteConfig(guard=GUARD_ALL)
    if variant == "clip":
        k = CLIP_SCALE.get(optimizer, 1.0)
        return RewriteConfig(
            guard=GUARD_ALL,
            clip=(
                ClipGroup(Selection(("emb",)), max_norm=0.9 * k, dims=(1,)),  # sparse: touched rows
                ClipGroup(Selection(("shared/kernel",)), max_norm=0.8 * k, dims=(1,)),
                # with a sparse gradient, dim 0 in dims falls back to the dense clip
                ClipGroup(Selection(("emb",)), max_norm=1.5 * k, dims=(0,)),
                ClipGroup(Selection(("task_*/kernel",)), max_norm=0.9 * k),  # whole variable
            ),
        )
    if variant == "global_norm":
        return RewriteConfig(
            guard=GUARD_ALL,
            global_norm_clip=GlobalNormClip(0.5, Selection(("*",), exclude=("task_b/*",))),
        )
    assert variant == "mixed"  # all three, each on a different subset
    k = CLIP_SCALE.get(optimizer, 1.0)
    return RewriteConfig(
        guard=Selection(("*",), exclude=("task_a/*", "emb")),
        clip=(
            ClipGroup(Selection(("emb", "task_a/kernel")), max_norm=0.9 * k, dims=(1,)),
            ClipGroup(Selection(("re:task_b/.*",)), max_norm=0.9 * k),
        ),
        global_norm_clip=GlobalNormClip(0.5, Selection(("re:(shared|task_a)/.*", "emb"))),
    )


# Optimizers whose update leaves variable and slots as they are on an all-zero gradient.
ZERO_GRADIENT_IS_A_NO_OP = {"GradientDescent", "Adagrad"}
NORM_SLACK = 1 + 1e-6


@dataclass(frozen=True)
class Case:
    optimizer: str
    resource: bool
    sparse: bool

    @property
    def id(self) -> str:
        kind = "resource" if self.resource else "ref"
        return f"{self.optimizer}-{kind}-{'sparse' if self.sparse else 'dense'}"


CASES = [Case(o, r, s) for o in model.OPTIMIZERS for r in (False, True) for s in (False, True)]


@dataclass(frozen=True)
class Plain:
    built: model.Built
    variables: list[str]
    run: model.Run


class PlainRuns:
    """Each case's plain graph, built and trained once for all spec variants."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.batches = model.make_batches()
        self._runs: dict[Case, Plain] = {}

    def get(self, case: Case) -> Plain:
        if case not in self._runs:
            built = model.build(case.optimizer, resource=case.resource, sparse=case.sparse)
            variables = model.variable_names(built.graph_def)
            run = model.train(
                built.graph_def, self.batches,
                config=self.config, grads=built.grads, variables=variables,
            )  # fmt: skip
            self._runs[case] = Plain(built, variables, run)
        return self._runs[case]


@pytest.fixture(scope="module")
def plain_runs(tf_config: Any) -> PlainRuns:
    return PlainRuns(tf_config)


# --------------------------------------------------------------------------- helpers


def _slots(var: str, names: list[str], trainable: set[str]) -> list[str]:
    return [n for n in names if n.startswith(var + "/") and n not in trainable]


def _non_slot(names: list[str], trainable: set[str]) -> list[str]:
    return [n for n in names if not any(n == v or n.startswith(v + "/") for v in trainable)]


def _changed(before: model.State, after: model.State, names: list[str]) -> list[str]:
    return [n for n in names if not np.array_equal(before[n], after[n])]


def _clip_targets(config: RewriteConfig, var: str) -> Iterator[ClipGroup]:
    return (g for g in config.clip if g.select.matches(var))


def _norms(value: np.ndarray, dims: tuple[int, ...] | None) -> np.ndarray:
    v = value.astype(np.float64)
    return np.sqrt(np.sum(v * v, axis=dims))


def _first_difference(a: model.Run, b: model.Run, names: list[str]) -> str | None:
    for t, (x, y) in enumerate(zip(a.states, b.states)):
        for n in names:
            if not np.array_equal(x[n], y[n]):
                diff = np.max(np.abs(x[n].astype(np.float64) - y[n].astype(np.float64)))
                return f"first difference after step {t - 1} in {n!r}: max |diff| = {diff:.3g}"
    return None


# --------------------------------------------------------------------------- property checks


def _check_guard(run: model.Run, plain: Plain, config: RewriteConfig, who: str) -> None:
    """A guarded variable with an all-zero gradient keeps its slots, and its value unless
    clipped."""
    trainable = set(plain.built.grads)
    guarded = {v for v in trainable if config.guard is not None and config.guard.matches(v)}
    for t, zero in enumerate(run.zero_grad):
        before, after = run.states[t], run.states[t + 1]
        for var in sorted(zero & guarded):
            kept = _slots(var, plain.variables, trainable)
            if not any(_clip_targets(config, var)):
                kept.append(var)
            changed = _changed(before, after, kept)
            assert not changed, (
                f"{who}, step {t}: {var!r} had an all-zero gradient, yet {changed} changed"
            )


def _clip_violations(
    run: model.Run, plain: Plain, config: RewriteConfig, batches: list[model.Batch]
) -> list[str]:
    """Where, after a step, a clip group's variable is over max_norm (for a sparse update
    without dim 0 in dims: a row the step touched)."""
    out = []
    for t, batch in enumerate(batches):
        state = run.states[t + 1]
        for group in config.clip:
            for var in plain.built.grads:
                if not group.select.matches(var):
                    continue
                value = state[var]
                sparse_path = group.dims is not None and 0 not in group.dims
                if sparse_path and var in plain.built.sparse:
                    value = value[np.unique(batch.ids)]
                norms = _norms(value, group.dims)
                if not np.all(norms <= group.max_norm * NORM_SLACK):
                    out.append(f"step {t}: {group.to_spec()}: {var!r} has norms {norms}")
    return out


def _global_norm_bites(plain: Plain, clip: GlobalNormClip) -> bool:
    """Some step's selected gradients (sparse ones as they come) exceed clip_norm by half."""
    for sq in plain.run.grad_sq:
        norm = np.sqrt(sum(v for name, v in sq.items() if clip.select.matches(name)))
        if norm > 1.5 * clip.clip_norm:
            return True
    return False


def _check_non_slot_state(run: model.Run, plain: Plain, who: str) -> None:
    """global_step and Adam's beta powers advance every step exactly as in the plain graph."""
    names = _non_slot(plain.variables, set(plain.built.grads))
    assert "global_step" in names
    for t, (got, want) in enumerate(zip(run.states, plain.run.states)):
        for n in names:
            np.testing.assert_array_equal(
                got[n], want[n], err_msg=f"{who}, after step {t - 1}: {n}"
            )
    assert int(run.states[-1]["global_step"]) == len(run.zero_grad), who


def _check_guard_mattered(case: Case, plain: Plain, config: RewriteConfig, rewritten: Any) -> None:
    """The plain graph changed some state of a guarded variable whose gradient was all zero."""
    if case.optimizer in ZERO_GRADIENT_IS_A_NO_OP:
        guards = [n for n in rewritten.node if n.op in ("Switch", "RefSwitch")]
        assert guards, "no Switch/RefSwitch in the rewritten graph: the guard is missing"
        return
    trainable = set(plain.built.grads)
    run = plain.run
    assert config.guard is not None
    for t, zero in enumerate(run.zero_grad):
        for var in filter(config.guard.matches, zero):
            watched = [var, *_slots(var, plain.variables, trainable)]
            if _changed(run.states[t], run.states[t + 1], watched):
                return
    pytest.fail("the unguarded graph never changed the state of an all-zero-gradient variable")


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rewritten_graph_trains_like_reference(
    case: Case, variant: str, plain_runs: PlainRuns, tf_config: Any, tmp_path: Path
) -> None:
    config = variant_config(variant, case.optimizer)
    plain = plain_runs.get(case)
    batches = plain_runs.batches
    # The test could fail: zero gradients occur, clipping and the global-norm clip bite.
    assert any(plain.run.zero_grad), "the schedule gave no variable an all-zero gradient"
    if config.clip:
        assert _clip_violations(plain.run, plain, config, batches), "no clip group ever bites"
    if config.global_norm_clip is not None:
        assert _global_norm_bites(plain, config.global_norm_clip), "the global norm never bites"

    rewritten = model.rewrite(plain.built.graph_def, config, tmp_path)
    got = model.train(
        rewritten, batches, config=tf_config, grads=plain.built.grads, variables=plain.variables
    )
    ref = model.build(case.optimizer, resource=case.resource, sparse=case.sparse, config=config)
    want = model.train(
        ref.graph_def, batches, config=tf_config, grads=ref.grads, variables=plain.variables
    )

    assert got.zero_grad == plain.run.zero_grad == want.zero_grad
    for who, run in (("reference", want), ("rewritten", got)):  # the reference must hold them too
        _check_guard(run, plain, config, who)
        violations = _clip_violations(run, plain, config, batches)
        assert not violations, f"{who}: clipped norms over max_norm: {violations[:3]}"
        _check_non_slot_state(run, plain, who)
    _check_guard_mattered(case, plain, config, rewritten)
    if case.resource:
        difference = _first_difference(got, want, plain.variables)
        assert difference is None, f"rewritten graph differs from the reference: {difference}"
    else:
        for t, (g, w) in enumerate(zip(got.states, want.states)):
            for n in plain.variables:
                np.testing.assert_allclose(
                    g[n], w[n], rtol=1e-5, atol=1e-6, err_msg=f"after step {t - 1}: {n}"
                )
