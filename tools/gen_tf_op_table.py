"""Regenerate optrewrite/tf/update_ops.json from TensorFlow's op registry.

The table gives, for every optimizer update op (``Apply*``, ``SparseApply*``,
``ResourceApply*``, ``ResourceSparseApply*``), the positions of its variable, slot,
gradient and indices inputs, read from the op definitions rather than guessed.
tests/tf/test_update_ops_table.py checks the committed table against the live registry.

    python tools/gen_tf_op_table.py            # rewrite the table
    python tools/gen_tf_op_table.py --check    # exit 1 when the table is stale
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "optrewrite" / "tf" / "update_ops.json"
UPDATE_OP = re.compile(r"^(Resource)?(Sparse)?Apply[A-Z]\w*$")
GRAD_ARGS = ("grad", "delta")


def build_table() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: PLC0415  (registers the ops)
    from tensorflow.core.framework import op_def_pb2  # noqa: PLC0415
    from tensorflow.python.client import pywrap_tf_session  # noqa: PLC0415

    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    ops = {}
    for op_def in sorted(op_list.op, key=lambda o: o.name):
        name = op_def.name
        if not UPDATE_OP.match(name):
            continue
        args = [a.name for a in op_def.input_arg]
        resource = name.startswith("Resource")
        state = [
            i
            for i, a in enumerate(op_def.input_arg)
            if (a.type == 20 if resource else a.is_ref)  # 20 == DT_RESOURCE
        ]
        grad = [i for i, a in enumerate(args) if a in GRAD_ARGS]
        if len(grad) != 1 or not state:
            raise SystemExit(f"{name}: cannot identify gradient/variable inputs in {args}")
        ops[name] = {
            "inputs": args,
            "var": state[0],
            "slots": state[1:],
            "grad": grad[0],
            "indices": args.index("indices") if "indices" in args else None,
            "resource": resource,
            "sparse": "Sparse" in name,
            "outputs": len(op_def.output_arg),
        }
    return {"generated_by": "tools/gen_tf_op_table.py", "tensorflow": tf.__version__, "ops": ops}


def main() -> int:
    table = build_table()
    text = json.dumps(table, indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        current = json.loads(TABLE.read_text()) if TABLE.exists() else {}
        if current.get("ops") != table["ops"]:
            print(f"{TABLE} is stale; run python tools/gen_tf_op_table.py", file=sys.stderr)
            return 1
        return 0
    TABLE.write_text(text)
    print(f"wrote {TABLE} ({len(table['ops'])} ops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
