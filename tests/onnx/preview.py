"""ai.onnx.preview.training test models: onnx's own generator cases, and built variants.

Expected values come from ``onnx.reference.ReferenceEvaluator`` run on one tensor at a time
(its multi-tensor Adam casts every result to float32, which would hide double precision).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

DOMAIN = "ai.onnx.preview.training"
STATES = {"Adagrad": 1, "Momentum": 1, "Adam": 2}
CASE_NAMES = ("test_adam", "test_adam_multiple", "test_adagrad", "test_adagrad_multiple",
              "test_momentum", "test_momentum_multiple", "test_nesterov_momentum")
IR_VERSION = 10
OPSET = 17


@dataclass(frozen=True)
class Step:
    """One training node and the values it is fed."""

    name: str
    kind: str
    attrs: dict
    r: np.ndarray
    t: np.ndarray
    xs: tuple[np.ndarray, ...]
    gs: tuple[np.ndarray, ...]
    states: tuple[tuple[np.ndarray, ...], ...]  # per state kind, per tensor
    opset: int = OPSET  # the model's ai.onnx opset

    @property
    def n(self) -> int:
        return len(self.xs)

    def names(self) -> dict[str, list[str]]:
        out = {"X": [f"X{i}" for i in range(self.n)], "G": [f"G{i}" for i in range(self.n)]}
        for k in range(len(self.states)):
            out[f"S{k}"] = [f"S{k}_{i}" for i in range(self.n)]
        return out

    def feed(self) -> dict[str, np.ndarray]:
        names = self.names()
        feed = {"R": self.r, "T": self.t}
        feed.update(zip(names["X"], self.xs))
        feed.update(zip(names["G"], self.gs))
        for k, block in enumerate(self.states):
            feed.update(zip(names[f"S{k}"], block))
        return feed

    def output_names(self) -> list[str]:
        names = self.names()
        outs = [f"{x}_new" for x in names["X"]]
        for k in range(len(self.states)):
            outs += [f"{s}_new" for s in names[f"S{k}"]]
        return outs

    def model(self) -> onnx.ModelProto:
        names = self.names()
        inputs = ["R", "T", *names["X"], *names["G"]]
        for k in range(len(self.states)):
            inputs += names[f"S{k}"]
        node = helper.make_node(self.kind, inputs, self.output_names(), name="optimizer",
                                domain=DOMAIN, **self.attrs)
        feed = self.feed()
        graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feed[n].dtype),
                                                      list(feed[n].shape)) for n in inputs]
        outputs = []
        for name, source in zip(self.output_names(), inputs[2:2 + self.n] + inputs[2 + 2 * self.n:]):
            v = feed[source]
            outputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)))
        graph = helper.make_graph([node], self.name, graph_inputs, outputs)
        return helper.make_model(graph, ir_version=IR_VERSION,
                                 opset_imports=[helper.make_opsetid("", self.opset), helper.make_opsetid(DOMAIN, 1)])

    def save(self, directory: Path) -> Path:
        path = directory / f"{self.name}.onnx"
        onnx.save(self.model(), path)
        return path

    def expected(self) -> list[np.ndarray]:
        """onnx.reference's result, one tensor at a time, in the output order."""
        xs, states = [], [[] for _ in self.states]
        for i in range(self.n):
            one = replace(self, xs=(self.xs[i],), gs=(self.gs[i],),
                          states=tuple((block[i],) for block in self.states))
            got = ReferenceEvaluator(one.model()).run(None, one.feed())
            xs.append(np.asarray(got[0], dtype=self.xs[i].dtype))
            for k in range(len(self.states)):
                states[k].append(np.asarray(got[1 + k], dtype=self.xs[i].dtype))
        return xs + [s for block in states for s in block]

    def astype(self, dtype: type) -> "Step":
        cast = lambda vs: tuple(v.astype(dtype) for v in vs)  # noqa: E731
        return replace(self, name=f"{self.name}_{np.dtype(dtype).name}", r=self.r.astype(dtype),
                       xs=cast(self.xs), gs=cast(self.gs), states=tuple(cast(b) for b in self.states))


@functools.cache
def generator_cases() -> dict[str, Step]:
    """onnx's test_adam*, test_adagrad*, test_momentum*, test_nesterov_momentum cases."""
    from onnx.backend.test.case.node import collect_testcases

    out = {}
    with np.errstate(all="ignore"):  # other operators' generators divide by zero on purpose
        cases = collect_testcases(None)
    for case in cases:
        if case.name not in CASE_NAMES:
            continue
        (node,) = case.model.graph.node
        inputs, _ = case.data_sets[0]
        r, t, *rest = (np.asarray(v) for v in inputs)
        states = STATES[node.op_type]
        n = len(rest) // (2 + states)
        blocks = [tuple(rest[k * n:(k + 1) * n]) for k in range(2 + states)]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        out[case.name] = Step(name=case.name, kind=node.op_type, attrs=attrs, r=r, t=t,
                              xs=blocks[0], gs=blocks[1], states=tuple(blocks[2:]))
    assert sorted(out) == sorted(CASE_NAMES), sorted(out)
    return out


def variants() -> list[Step]:
    """The generator cases, and each at another step count, with non-default attributes, in double."""
    out = []
    for step in generator_cases().values():
        out.append(step)
        later = replace(step, name=f"{step.name}_t5", t=np.array(5, dtype=np.int64))
        out.append(later)
        extra = dict(step.attrs)
        if step.kind == "Adam":
            extra.update(norm_coefficient_post=0.05)
        elif step.kind == "Adagrad":
            extra.update(decay_factor=0.3, norm_coefficient=0.02)
        else:
            extra.update(norm_coefficient=0.01)
        out.append(replace(later, name=f"{step.name}_attrs", attrs=extra))
    out += [s.astype(np.float64) for s in list(out)]
    return out


def elem_type(step: Step) -> int:
    return TensorProto.DOUBLE if step.xs[0].dtype == np.float64 else TensorProto.FLOAT
