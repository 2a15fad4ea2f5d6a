"""Regenerate optrewrite/tf/verify_ops.py: the TensorFlow ops ``--verify`` may run.

The list is an allow-list, decided per TensorFlow op module and reviewed here. TensorFlow
generates one Python module per op family (``tensorflow/python/ops/gen_math_ops.py``,
``gen_io_ops.py``, ...); every registered op whose Python wrapper lives in a module that
:data:`POLICY` allows is on the list, except the ops that module's entry names with the
reason they are left out. Ops of refused modules, of modules this policy has not reviewed,
and ops with no generated wrapper (internal ``_``-prefixed ops, TPU, test and rewrite-only
ops) are not on it. The test of the list (tests/test_verify.py) checks that every op of the
repository's graphs, of every optimizer's update ops and of the rewrite's inserted nodes is
on it, and that the committed module is what this script writes.

    python tools/gen_tf_verify_ops.py            # rewrite optrewrite/tf/verify_ops.py
    python tools/gen_tf_verify_ops.py --check    # exit 1 when it is stale
"""
from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "optrewrite" / "tf" / "verify_ops.py"
WRAPPER = re.compile(r'_apply_op_helper\(\s*"(\w+)"')

# Module stem -> (what its ops are, {op left out: why}). Each allowed module computes on
# tensors in memory and holds per-session state (variables, queues, tables, tensor arrays)
# at most: none of its ops (besides those left out) opens a file, a socket or a device, or
# runs code that is not an op.
ALLOWED: dict[str, tuple[str, dict[str, str]]] = {
    "math_ops": ("arithmetic, reductions, comparisons, casts, segment ops", {}),
    "array_ops": ("shapes, slicing, gathers, concatenation, Const, Placeholder, Identity", {
        "ImmutableConst": "memory-maps the file its memory_region_name attr names",
    }),
    "nn_ops": ("activations, convolutions, pooling, losses (L2Loss), top-k", {}),
    "state_ops": ("ref variables and their assigns and scatter updates", {}),
    "resource_variable_ops": ("resource variables: VarHandleOp, reads, assigns, gathers, scatters", {}),
    "control_flow_ops": ("control flow v1: Switch, Merge, Enter, Exit, NextIteration, LoopCond, NoOp", {
        "Abort": "ends the process",
    }),
    "functional_ops": ("control flow v2 and calls: If, While, Case, PartitionedCall (their functions are checked too)", {
        "RemoteCall": "runs its function on another task",
    }),
    "training_ops": ("the optimizers' fused updates (every op of optrewrite/tf/update_ops.json)", {}),
    "random_ops": ("stateful random sampling", {}),
    "stateless_random_ops": ("stateless random sampling", {}),
    "stateless_random_ops_v2": ("stateless random sampling", {}),
    "stateful_random_ops": ("random generators held in resources", {}),
    "random_index_shuffle_ops": ("random index permutation", {}),
    "linalg_ops": ("linear algebra", {}),
    "sparse_csr_matrix_ops": ("CSR sparse matrices", {}),
    "spectral_ops": ("FFTs", {}),
    "bitwise_ops": ("bitwise arithmetic", {}),
    "special_math_ops": ("special functions", {}),
    "manip_ops": ("Roll", {}),
    "sparse_ops": ("sparse tensors, and their per-session handle maps", {}),
    "set_ops": ("set operations", {}),
    "count_ops": ("counting", {}),
    "ctc_ops": ("CTC losses and decoders", {}),
    "candidate_sampling_ops": ("candidate samplers", {
        "FixedUnigramCandidateSampler": "reads the file its vocab_file attr names",
    }),
    "clustering_ops": ("k-means helpers", {}),
    "sdca_ops": ("the SDCA optimizer", {}),
    "boosted_trees_ops": ("boosted trees held in resources", {}),
    "rnn_ops": ("fused LSTM and GRU cells", {}),
    "list_ops": ("tensor lists (control flow v2 gradients)", {}),
    "map_ops": ("tensor maps", {}),
    "optional_ops": ("optionals", {}),
    "composite_tensor_ops": ("composite-tensor variants", {}),
    "ragged_array_ops": ("ragged tensors", {}),
    "ragged_conversion_ops": ("ragged tensors", {}),
    "ragged_math_ops": ("ragged tensors", {}),
    "uniform_quant_ops": ("uniform quantization", {}),
    "string_ops": ("strings in memory: joins, splits, regexes, hashing, formatting", {}),
    "parsing_ops": ("decoding in memory: CSV, Example protos, raw bytes, numbers", {}),
    "image_ops": ("image decoding, encoding and resizing in memory", {}),
    "audio_ops": ("WAV decoding and encoding, spectrograms, in memory", {}),
    "lookup_ops": ("hash tables in memory", {
        "InitializeTableFromTextFile": "reads the file its input names",
        "InitializeTableFromTextFileV2": "reads the file its input names",
    }),
    "logging_ops": ("Assert, Print to stderr, Timestamp, summaries as serialized protos", {
        "PrintV2": "may print to a file (output_stream file://...); verify allows it when it prints to a stream",
    }),
    "data_flow_ops": ("queues, stacks, tensor arrays, accumulators, barriers, staging areas, DynamicStitch", {
        "RecordInput": "reads the files its file_pattern attr names",
        "GetSessionHandle": "keeps a tensor in the session beyond the step",
        "GetSessionHandleV2": "keeps a tensor in the session beyond the step",
        "GetSessionTensor": "reads a tensor kept in the session",
        "DeleteSessionTensor": "deletes a tensor kept in the session",
    }),
}

# Module stem -> why none of its ops runs.
REFUSED: dict[str, str] = {
    "io_ops": "files: ReadFile, WriteFile, readers, checkpoints (Save, Restore), MatchingFiles",
    "dataset_ops": "tf.data: reads and writes files (TFRecord, Cache, Save), runs functions in threads",
    "experimental_dataset_ops": "tf.data: reads and writes files (DatasetToTFRecord, Snapshot, DistributedSave)",
    "summary_ops": "summary writers write event files and databases",
    "debug_ops": "debug dumps to files and gRPC streams",
    "checkpoint_ops": "reads checkpoints and vocabulary files",
    "filesystem_ops": "configures file systems",
    "script_ops": "runs Python functions (PyFunc)",
    "decode_proto_ops": "may read a proto descriptor file (descriptor_source)",
    "encode_proto_ops": "may read a proto descriptor file (descriptor_source)",
    "collective_ops": "communicates with other tasks",
    "nccl_ops": "communicates with other devices",
    "sendrecv_ops": "communicates with other devices and tasks",
    "rpc_ops": "makes RPCs",
    "dtensor_ops": "communicates with other devices",
    "tpu_ops": "TPU",
    "tpu_partition_ops": "TPU",
    "xla_ops": "XLA compilation and host transfers",
    "batch_ops": "batches across session runs, with timers and functions",
    "sync_ops": "device synchronisation",
    "cudnn_rnn_ops": "GPU-only kernels",
    "user_ops": "an example op",
    "audio_microfrontend_op": "contrib audio front end",
    "mlir_passthrough_op": "compiles MLIR text it is given",
    "check_preemption_op": "talks to the coordination service",
}


def registry() -> tuple[str, dict[str, set[str]]]:
    """TensorFlow's version and its ops by the stem of the gen_ module wrapping them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: PLC0415  (registers the ops)
    from tensorflow.core.framework import op_def_pb2  # noqa: PLC0415
    from tensorflow.python.client import pywrap_tf_session  # noqa: PLC0415

    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    registered = {op.name for op in op_list.op}
    by_module: dict[str, set[str]] = {}
    for path in sorted(Path(tf.__file__).parent.rglob("gen_*.py")):
        stem = path.stem[len("gen_"):]
        found = {m.group(1) for m in WRAPPER.finditer(path.read_text(encoding="utf-8"))} & registered
        if found:
            by_module.setdefault(stem, set()).update(found)
    return tf.__version__, by_module


def render(version: str, by_module: dict[str, set[str]]) -> str:
    unreviewed = sorted(set(by_module) - set(ALLOWED) - set(REFUSED))
    lines = [
        f'"""The TensorFlow ops --verify runs: generated by tools/gen_tf_verify_ops.py from TensorFlow {version}.',
        "",
        "Do not edit: the policy, with the reason for every module and every op left out, is in the",
        "tool. An op is on the list when its generated Python wrapper lives in a TensorFlow op module",
        "the policy allows (ops that compute on tensors in memory, hold per-session state, or run",
        "control flow), and the policy does not leave it out. Not on it: files, checkpoints, tf.data,",
        "summaries and debug dumps, Python functions, communication with other devices or tasks,",
        "TPU and XLA, ops without a generated wrapper (internal, test and rewrite-only ops), and ops",
        "of modules the policy has not reviewed"
        + (f" ({', '.join(unreviewed)})." if unreviewed else "."),
        "",
        "optrewrite.tf.verify adds two rules to the list: an op that calls functions (If, While,",
        "PartitionedCall, ...) runs only when every function it may call holds allowed ops, and",
        "PrintV2 runs only when it prints to a stream, not to a file.",
        '"""',
        "",
        f'TENSORFLOW = "{version}"',
        "",
        "ALLOWED_OPS: frozenset[str] = frozenset({",
    ]
    for stem in sorted(ALLOWED):
        what, left_out = ALLOWED[stem]
        ops = sorted(by_module.get(stem, set()) - set(left_out))
        if not ops:
            continue
        lines += textwrap.wrap(f"{stem}: {what}", 100, initial_indent="    # ", subsequent_indent="    #   ")
        for op in left_out:
            lines += textwrap.wrap(f"not {op}: {left_out[op]}", 100, initial_indent="    #   ",
                                   subsequent_indent="    #     ")
        row = "   "
        for op in ops:
            item = f' "{op}",'
            if len(row) + len(item) > 100:
                lines.append(row)
                row = "   "
            row += item
        lines.append(row)
    lines.append("})")
    return "\n".join(lines) + "\n"


def main() -> int:
    version, by_module = registry()
    text = render(version, by_module)
    if "--check" in sys.argv:
        current = MODULE.read_text(encoding="utf-8") if MODULE.exists() else ""
        if _ops(current) != _ops(text):
            print(f"{MODULE} is stale; run python tools/gen_tf_verify_ops.py", file=sys.stderr)
            return 1
        return 0
    MODULE.write_text(text, encoding="utf-8")
    print(f"wrote {MODULE} ({len(_ops(text))} ops)")
    return 0


def _ops(text: str) -> set[str]:
    """The op names a rendering lists (comments and the version aside)."""
    return set(re.findall(r'"(\w+)",', text.split("ALLOWED_OPS", 1)[-1]))


if __name__ == "__main__":
    sys.exit(main())
