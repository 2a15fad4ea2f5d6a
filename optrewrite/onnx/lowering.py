"""Lowering ``ai.onnx.preview.training`` updates to standard ONNX ops.

Per tensor, in the element type E of X (float or double), with the operator's attributes
as E constants and G' = norm_coefficient * X + G (just G when norm_coefficient is 0)::

    Adagrad   r = R / (1 + T * decay_factor)            (a scalar, computed in double)
              H' = H + G' * G'
              X' = X - r * G' / (Sqrt(H') + epsilon)
    Momentum  b = Where(T > 0, beta, 1)
              V' = alpha * V + b * G'
              X' = X - R * V'                          mode "standard"
              X' = X - R * (G' + alpha * V')           mode "nesterov"
    Adam      r = Where(T > 0, R * Sqrt(1 - beta^T) / (1 - alpha^T), R)   (double)
              V' = alpha * V + (1 - alpha) * G'
              H' = beta * H + (1 - beta) * (G' * G')
              X' = (1 - norm_coefficient_post) * (X - r * (V' / (Sqrt(H') + epsilon)))

The operand order follows onnx's reference implementation. Scalars shared by the node's
tensors are emitted once, before the per-tensor ops; the per-tensor ops may be emitted into
an ``If`` branch by the guard.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from optrewrite.errors import InputError
from optrewrite.onnx.graph import PREVIEW_DOMAIN, Block


def defaults(op_type: str) -> dict[str, object]:
    """The operator's attribute defaults from its schema (None: required).

    Float attributes are stored as float32, so a default of 0.9 is 0.8999999761581421;
    the lowering uses the stored values, as every runtime does.
    """
    schema = onnx.defs.get_schema(op_type, 1, PREVIEW_DOMAIN)
    out: dict[str, object] = {}
    for name, attr in schema.attributes.items():
        value = helper.get_attribute_value(attr.default_value) if attr.default_value.name else None
        out[name] = value.decode() if isinstance(value, bytes) else value
    return out


def attributes(node: onnx.NodeProto, source: object) -> dict[str, object]:
    """The node's attributes with the operator's defaults; a required one missing, an unknown
    one or one of another type than the schema's is an error."""
    values = defaults(node.op_type)
    schema = onnx.defs.get_schema(node.op_type, 1, PREVIEW_DOMAIN)
    types = {name: int(a.type) for name, a in schema.attributes.items()}
    for attr in node.attribute:
        if attr.name not in values:
            raise InputError(f"{source}: unknown attribute {attr.name!r} of {node.op_type}")
        if attr.type != types[attr.name]:
            want = onnx.AttributeProto.AttributeType.Name(types[attr.name]).lower()
            raise InputError(f"{source}: attribute {attr.name!r} of {node.op_type} must be a {want}")
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise InputError(f"{source}: attribute {attr.name!r} of {node.op_type} is not UTF-8 text") from None
        values[attr.name] = value
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise InputError(f"{source}: {node.op_type} needs attribute(s) {', '.join(missing)}")
    if node.op_type == "Momentum" and values["mode"] not in ("standard", "nesterov"):
        raise InputError(f"{source}: Momentum mode must be 'standard' or 'nesterov', got {values['mode']!r}")
    return values


@dataclass(frozen=True)
class Shared:
    """Scalars a node's tensors share: the step size (and Momentum's gradient coefficient)."""

    rate: str
    coefficient: str | None = None


def shared_scalars(b: Block, kind: str, attrs: dict[str, object], r: str, t: str,
                   r_type: int, elem: int) -> Shared:
    """Emit the per-node scalars in element type ``elem``."""
    D = TensorProto.DOUBLE
    positive = None
    if kind in ("Adam", "Momentum"):
        positive = b.op("Greater", [t, b.const(0, TensorProto.INT64)])
    if kind == "Adagrad" and attrs["decay_factor"] != 0.0:
        td = b.op("Cast", [t], to=D)
        denom = b.op("Add", [b.const(1.0, D), b.op("Mul", [td, b.const(attrs["decay_factor"], D)])])
        rate = b.op("Cast", [b.op("Div", [_cast(b, r, r_type, D), denom])], to=elem)
        return Shared(rate=rate)
    if kind == "Adam":
        td = b.op("Cast", [t], to=D)
        rd = _cast(b, r, r_type, D)
        one = b.const(1.0, D)
        root = b.op("Sqrt", [b.op("Sub", [one, b.op("Pow", [b.const(attrs["beta"], D), td])])])
        corr = b.op("Sub", [one, b.op("Pow", [b.const(attrs["alpha"], D), td])])
        adjusted = b.op("Div", [b.op("Mul", [rd, root]), corr])
        return Shared(rate=b.op("Cast", [b.op("Where", [positive, adjusted, rd])], to=elem))
    rate = _cast(b, r, r_type, elem)
    if kind == "Momentum":
        coefficient = b.op("Where", [positive, b.const(attrs["beta"], elem), b.const(1.0, elem)])
        return Shared(rate=rate, coefficient=coefficient)
    return Shared(rate=rate)


def _cast(b: Block, name: str, have: int, want: int) -> str:
    return name if have == want else b.op("Cast", [name], to=want)


def update(b: Block, kind: str, attrs: dict[str, object], shared: Shared, x: str, g: str,
           states: list[str], elem: int, outs: list[str]) -> None:
    """Emit one tensor's update; ``outs`` names X' and then the new states."""
    c = lambda v: b.const(v, elem)  # noqa: E731
    norm = attrs.get("norm_coefficient", 0.0)
    gr = g if norm == 0.0 else b.op("Add", [b.op("Mul", [c(norm), x]), g])
    if kind == "Adagrad":
        (h,) = states
        h_new = b.op("Add", [h, b.op("Mul", [gr, gr])], out=outs[1])
        denom = b.op("Add", [b.op("Sqrt", [h_new]), c(attrs["epsilon"])])
        step = b.op("Div", [b.op("Mul", [shared.rate, gr]), denom])
        b.op("Sub", [x, step], out=outs[0])
    elif kind == "Momentum":
        (v,) = states
        assert shared.coefficient is not None
        v_new = b.op("Add", [b.op("Mul", [c(attrs["alpha"]), v]), b.op("Mul", [shared.coefficient, gr])],
                     out=outs[1])
        if attrs["mode"] == "standard":
            direction = v_new
        else:
            direction = b.op("Add", [gr, b.op("Mul", [c(attrs["alpha"]), v_new])])
        b.op("Sub", [x, b.op("Mul", [shared.rate, direction])], out=outs[0])
    else:
        v, h = states
        alpha, beta = float(attrs["alpha"]), float(attrs["beta"])  # type: ignore[arg-type]
        v_new = b.op("Add", [b.op("Mul", [c(alpha), v]), b.op("Mul", [c(1 - alpha), gr])], out=outs[1])
        h_new = b.op("Add", [b.op("Mul", [c(beta), h]), b.op("Mul", [c(1 - beta), b.op("Mul", [gr, gr])])],
                     out=outs[2])
        denom = b.op("Add", [b.op("Sqrt", [h_new]), c(attrs["epsilon"])])
        post = attrs["norm_coefficient_post"]
        moved = b.op("Sub", [x, b.op("Mul", [shared.rate, b.op("Div", [v_new, denom])])],
                     out=outs[0] if post == 0.0 else None)
        if post != 0.0:
            b.op("Mul", [c(1 - float(post)), moved], out=outs[0])  # type: ignore[arg-type]
