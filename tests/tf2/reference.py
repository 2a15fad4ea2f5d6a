"""Construction-time reference of what optrewrite does to a TensorFlow 2 training step.

Our own implementation of docs/semantics.md (#guard, #clip, #global-norm-clip), written
around the optimizer at construction time, step for step, with no knowledge of the
rewriter. One reference step, inside a ``tf.function`` with the ``train`` signature's input
signature, is

1. the model's own loss and gradients (:meth:`models.Built.loss_and_grads`, the code the
   ``train`` signature runs);
2. global-norm clip: ``tf.clip_by_global_norm`` over the selected gradients (in the
   trainable-variable order);
3. a snapshot of each guarded variable and its optimizer slots, and whether the variable's
   (clipped) gradient is all zero: ``count_nonzero == 0`` over the dense gradient or an
   ``IndexedSlices``' values (-0.0 is zero; NaN and inf are not);
4. the optimizer's own update (:meth:`models.Built.apply`: ``apply_gradients``, or the
   loss-scale optimizer's ``apply`` with its skip of non-finite steps); shared optimizer
   state (iterations, learning rate, beta powers, the loss scale) advances as it does;
5. where the gradient was all zero, the variable and its slots get their snapshot back —
   the same values as skipping their update;
6. the clip groups in spec order, every step, after the (possibly skipped) update:
   ``v.assign_sub(v - tf.clip_by_norm(v, max_norm, dims))``; for an ``IndexedSlices``
   gradient (an embedding lookup) whose dims leave out dim 0, only the touched rows, each
   once (``tf.unique`` of the indices), gathered, clipped and scatter-subtracted.

The spec is written from the same :class:`RewriteConfig` the reference runs
(tests/tf/reference.py), and :func:`rewrite` runs the optrewrite CLI on a SavedModel.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf

from ..tf.reference import ClipGroup, GlobalNormClip, RewriteConfig, Selection
from . import models
from .models import SIGNATURE, Built, State, Step

__all__ = [
    "ClipGroup", "GlobalNormClip", "Reference", "RewriteConfig", "Rewritten", "Selection",
    "exclude_variables", "first_difference", "rewrite", "run_loaded",
]  # fmt: skip


MODEL_VARIABLES = (
    "net/emb/embeddings", "net/shared/kernel", "net/shared/bias",
    "net/head_a/kernel", "net/head_a/bias", "net/head_b/kernel", "net/head_b/bias",
)  # fmt: skip

# --------------------------------------------------------------------------- the reference


def is_all_zero(grad: Any) -> tf.Tensor:
    values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
    return tf.equal(tf.math.count_nonzero(values), 0)


def _clip_dense(var: tf.Variable, max_norm: float, dims: Sequence[int] | None) -> Any:
    value = var.read_value()
    return var.assign_sub(value - tf.clip_by_norm(value, max_norm, axes=dims))


def _clip_rows(var: tf.Variable, grad: tf.IndexedSlices, max_norm: float,
               dims: Sequence[int]) -> Any:  # fmt: skip
    rows, _ = tf.unique(grad.indices)
    value = tf.gather(var, rows)
    delta = value - tf.clip_by_norm(value, max_norm, axes=dims)
    return var.scatter_sub(tf.IndexedSlices(delta, rows, grad.dense_shape))


class Reference:
    """The step of ``built`` with ``config``'s global-norm clip, guard and clips around it.

    ``built`` must hold the initial values to start from (``Saved.rebuild()``).
    """

    def __init__(self, built: Built, config: RewriteConfig) -> None:
        if built.scale_names:
            # Inside a loss-scaled step the gradients the update consumes are unscaled
            # inside the optimizer; the reference does not reach in there.
            assert config.global_norm_clip is None, "no global-norm reference for loss scaling"
        self.built = built
        self.config = config
        self._fn = tf.function(self._body, input_signature=SIGNATURE)
        # Per step, the variables whose (clipped) gradient was all zero.
        self.all_zero: list[set[str]] = []

    def step(self, step: Step) -> State:
        out = self._fn(*step.args())
        zero = out["all_zero"].numpy()
        self.all_zero.append({p for p, z in zip(self.built.variables, zero) if z})
        return self.built.snapshot()

    def run(self, steps: Iterable[Step]) -> list[State]:
        """States before the first step and after each step."""
        states = [self.built.snapshot()]
        states += [self.step(s) for s in steps]
        return states

    def _body(self, ids: Any, targets: Any, loss_weights: Any) -> dict[str, tf.Tensor]:
        b, cfg = self.built, self.config
        loss, grads = b.loss_and_grads(ids, targets, loss_weights)
        grads = list(grads)

        gnc = cfg.global_norm_clip
        if gnc is not None:
            chosen = [
                i for i, (p, g) in enumerate(zip(b.variables, grads))
                if g is not None and gnc.select.matches(p)
            ]  # fmt: skip
            clipped, _ = tf.clip_by_global_norm([grads[i] for i in chosen], gnc.clip_norm)
            for i, g in zip(chosen, clipped):
                grads[i] = g

        all_zero = tf.stack([
            tf.constant(False) if g is None else is_all_zero(g) for g in grads
        ])  # fmt: skip
        guarded = []
        for path, grad in zip(b.variables, grads):
            if grad is None or cfg.guard is None or not cfg.guard.matches(path):
                continue
            names = [path, *b.slots[path]]
            before = [tf.identity(b.tf_vars[n].read_value()) for n in names]
            guarded.append((is_all_zero(grad), names, before))

        b.apply(grads)

        for zero, names, before in guarded:

            def restore(names: list[str] = names, before: list[Any] = before) -> Any:
                return tf.group(*[b.tf_vars[n].assign(v) for n, v in zip(names, before)])

            tf.cond(zero, restore, tf.no_op)

        for group in cfg.clip:
            for path, grad in zip(b.variables, grads):
                if grad is None or not group.select.matches(path):
                    continue
                var = b.tf_vars[path]
                rows_only = (
                    isinstance(grad, tf.IndexedSlices)
                    and group.dims is not None
                    and 0 not in group.dims
                )
                if rows_only:
                    _clip_rows(var, grad, group.max_norm, group.dims)
                else:
                    _clip_dense(var, group.max_norm, group.dims)
        return {"loss": loss, "all_zero": all_zero}


# --------------------------------------------------------------------------- running optrewrite


@dataclass(frozen=True)
class Rewritten:
    """One CLI run: exit code, stderr, the JSON report (None if not written), output dir."""

    rc: int
    stderr: str
    report: dict[str, Any] | None
    out_dir: Path

    def describe(self) -> str:
        return f"optrewrite exit {self.rc}: {self.stderr.strip()}"

    def skipped_variables(self, variables: Sequence[str]) -> set[str]:
        """Variables the report lists as skipped; every variable if an entry names none
        and no site was rewritten."""
        assert self.report is not None
        out: set[str] = set()
        for entry in self.report.get("skipped", []):
            if entry.get("variable"):
                out.add(entry["variable"])
        rewritten = {s.get("variable") for s in self.report.get("sites", []) if s.get("inserted")}
        if not rewritten and self.report.get("skipped"):
            out |= set(variables)
        return out & set(variables)


def rewrite(export_dir: Path, config: RewriteConfig, work: Path, name: str) -> Rewritten:
    """``optrewrite EXPORT_DIR --spec SPEC -o OUT --report REPORT`` (in process)."""
    from optrewrite import cli

    work.mkdir(parents=True, exist_ok=True)
    spec = work / f"{name}.yaml"
    spec.write_text(config.to_yaml())
    out_dir = work / f"{name}.rewritten"
    report = work / f"{name}.report.json"
    err = io.StringIO()
    argv = [str(export_dir), "--spec", str(spec), "-o", str(out_dir), "--report", str(report)]
    with contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    data = json.loads(report.read_text()) if report.exists() else None
    return Rewritten(rc, err.getvalue(), data, out_dir)


def exclude_variables(config: RewriteConfig, names: Iterable[str],
                      variables: Sequence[str] = MODEL_VARIABLES) -> RewriteConfig:  # fmt: skip
    """``config`` with ``names`` excluded from every rule (what a rewrite that skipped those
    variables' updates implements); a rule left selecting none of ``variables`` is dropped."""
    extra = tuple(sorted(set(names)))
    if not extra:
        return config

    def sel(s: Selection) -> Selection | None:
        out = Selection(s.include, s.exclude + extra)
        return out if any(out.matches(v) for v in variables) else None

    gnc = config.global_norm_clip
    gnc_sel = None if gnc is None else sel(gnc.select)
    clips = [(g, sel(g.select)) for g in config.clip]
    return RewriteConfig(
        guard=None if config.guard is None else sel(config.guard),
        clip=tuple(replace(g, select=s) for g, s in clips if s is not None),
        global_norm_clip=None if gnc is None or gnc_sel is None else replace(gnc, select=gnc_sel),
    )


def rewrite_excluding_refused(r: "CaseRuns", name: str, config: RewriteConfig
                              ) -> tuple[Rewritten, set[str] | None, RewriteConfig]:  # fmt: skip
    """Rewrite with ``config``; when optrewrite refuses because a selected variable is not
    rewritable (exit 2, naming the variable and why), exclude that variable, as a user
    would, and rewrite again. Returns the last rewrite, the variables it skipped (None:
    refused altogether, with reasons) and the config the reference must run: the spec with
    every refused and skipped variable excluded."""
    refused: list[str] = []
    spec = config
    for attempt in range(len(MODEL_VARIABLES) + 1):
        label = name if not refused else f"{name}-{attempt}"
        rw = r.rewrite(label, spec)
        m = NOT_REWRITABLE.search(rw.stderr) if rw.rc == 2 else None
        if m is None:
            break
        assert m.group("var") not in refused, rw.describe()
        refused.append(m.group("var"))
        spec = exclude_variables(config, refused)
        if spec.guard is None and not spec.clip and spec.global_norm_clip is None:
            return rw, None, spec
    skipped = check_report(rw, r.variables())
    if skipped is None:
        return rw, None, spec
    return rw, skipped | set(refused), exclude_variables(config, skipped | set(refused))


# --------------------------------------------------------------------------- comparing runs


def run_loaded(export_dir: Path, names: list[str], steps: Iterable[Step]) -> list[State]:
    """Load a SavedModel and train it through its ``train`` signature: the state before the
    first step and after each step."""
    loaded = tf.saved_model.load(str(export_dir))
    train = loaded.signatures["train"]
    states = [models.read_state(loaded, names)]
    for s in steps:
        train(**s.feed())
        states.append(models.read_state(loaded, names))
    return states


def first_difference(a: list[State], b: list[State], names: Sequence[str],
                     labels: tuple[str, str] = ("rewritten", "reference")) -> str | None:  # fmt: skip
    """The first step after which ``a`` and ``b`` differ, with every differing name and its
    max |difference| (bitwise comparison: NaN equals NaN only in the same place)."""
    assert len(a) == len(b), (len(a), len(b))
    for t, (x, y) in enumerate(zip(a, b)):
        diffs = []
        for n in names:
            if not same_bits(x[n], y[n]):
                d = np.abs(x[n].astype(np.float64) - y[n].astype(np.float64))
                diffs.append(f"{n!r} (max |diff| {np.nanmax(d) if d.size else 0:.3g})")
        if diffs:
            when = "initially" if t == 0 else f"after step {t - 1}"
            return f"{labels[0]} != {labels[1]} {when}: " + ", ".join(diffs)
    return None


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """Bit for bit: -0.0 differs from 0.0, a NaN equals only the same NaN."""
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def changed(before: State, after: State, names: Iterable[str]) -> list[str]:
    return [n for n in names if not same_bits(before[n], after[n])]


# --------------------------------------------------------------------------- one case's runs


@dataclass
class RefRun:
    states: list[State]
    all_zero: list[set[str]]


class CaseRuns:
    """Everything the tests run for one saved case, each run once, on one schedule:
    ``warmup`` steps where nothing is masked, then ``steps`` masked steps. The original
    SavedModel trained; references for a config; rewrites for a config, and the rewritten
    SavedModels trained. States: before the first step and after each step, so
    ``states[: warmup + 1]`` is the unmasked part."""

    def __init__(self, saved: models.Saved, work: Path, steps: int, warmup: int,
                 schedule: list[Step] | None = None) -> None:  # fmt: skip
        self.saved = saved
        self.work = work
        self.names = saved.state_names
        self.warmup = warmup
        self.schedule = models.schedule(steps, warmup=warmup) if schedule is None else schedule
        self._cache: dict[Any, Any] = {}

    def _once(self, key: Any, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def original(self) -> list[State]:
        return self._once("original", lambda: run_loaded(
            self.saved.export_dir, self.names, self.schedule))

    def reference(self, config: RewriteConfig) -> RefRun:
        def make() -> RefRun:
            ref = Reference(self.saved.rebuild(), config)
            return RefRun(ref.run(self.schedule), ref.all_zero)

        return self._once(("reference", config), make)

    def rewrite(self, name: str, config: RewriteConfig) -> Rewritten:
        return self._once(("rewrite", name), lambda: rewrite(
            self.saved.export_dir, config, self.work, name))

    def rewritten(self, name: str, rw: Rewritten | None = None) -> list[State]:
        rw = self._cache[("rewrite", name)] if rw is None else rw
        name = str(rw.out_dir)
        return self._once(("rewritten", name), lambda: run_loaded(
            rw.out_dir, self.names, self.schedule))

    def variables(self) -> list[str]:
        """The trainable variables' paths."""
        return [n for n in self.names if n in MODEL_VARIABLES]

    def unmasked(self, states: list[State]) -> list[State]:
        return states[: self.warmup + 1]


REFUSED = re.compile(r"has no optimizer update the spec could select \(found: (?P<found>.+?)"
                     r"(, and \d+ more: optrewrite explain lists them)?\)$")
NOT_REWRITABLE = re.compile(r"'(?P<var>[^']+)' is not rewritable: (?P<reason>\S.*)")


def check_report(rw: Rewritten, variables: Sequence[str]) -> set[str] | None:
    """The rewrite succeeded and its report is well formed: the variables it skipped (each
    skip has a reason). None when the rewrite was refused because every update it found is
    skipped — the documented outcome for a spec that selects no rewritable update: exit 2,
    one line naming the first update found and why it is skipped, and how many more,
    nothing written."""
    if rw.rc == 2 and NOT_REWRITABLE.search(rw.stderr):
        assert not rw.out_dir.exists(), "a refused rewrite wrote its output"
        return None
    if rw.rc == 2:
        m = REFUSED.search(rw.stderr)
        assert m, rw.describe()
        where, _, reason = m.group("found").partition(": ")
        assert where.strip() and reason.strip(), f"skipped without a reason: {m.group('found')!r}"
        assert not rw.out_dir.exists(), "a refused rewrite wrote its output"
        return None
    assert rw.rc == 0, rw.describe()
    assert rw.report is not None, "no --report written"
    assert rw.report.get("schema") == "optrewrite.report/1", rw.report.get("schema")
    for entry in rw.report.get("skipped", []):
        assert str(entry.get("reason") or "").strip(), f"skipped without a reason: {entry}"
    return rw.skipped_variables(variables)
