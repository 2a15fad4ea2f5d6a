"""Benchmark the TF rewrite on a large training graph against a parse/serialize floor.

What it measures, at three sizes (1/4, 1/2 and all of a ~200k-node graph):

* **rewrite**: ``python -m optrewrite GRAPH --spec SPEC -o OUT --report R -q`` in a fresh
  process, with a spec that guards every variable and clips one variable in ten (the
  variables of every tenth block);
* **floor**: also in a fresh process, the least any tool that rewrites a GraphDef must do:
  read the file, parse it with the protobuf schema optrewrite uses
  (``optrewrite.tf.proto.GraphDef``), one Python pass over the nodes (reading ``name`` and
  ``op``), ``SerializeToString``, and write the bytes the way optrewrite writes its output
  (``optrewrite.fileio.write_atomic``).

* **explain**: ``python -m optrewrite explain GRAPH --spec SPEC`` in a fresh process (the
  table it prints; the rewrite runs in memory);
* **dry-run**: ``python -m optrewrite GRAPH --spec SPEC --dry-run`` (the rewrite in memory,
  nothing serialized or written);
* **check**: ``python -m optrewrite OUT --spec SPEC --check`` on the rewritten graph (is it
  up to date with the spec? the CI gate of the README's recipes).

Each is the wall time of the whole process (interpreter start and imports included) and
its peak RSS (``ru_maxrss`` from ``resource.getrusage(RUSAGE_CHILDREN)`` in a small timing
process that runs nothing else), the median of 3 runs, floor and rewrite alternating.
Nothing is subtracted; the ratio is rewrite / floor. Time per node at the three sizes
shows whether the cost is linear.

The graph: one small real ``tf.compat.v1`` training block (dense ref and resource variables
and two embeddings with sparse gradients, trained by Momentum, Adam and GradientDescent:
12 update sites, Apply ops and decomposed sparse updates both), exported once and
replicated under the prefixes ``blk0000/``, ``blk0001/``, ... (node names, data and
``^control`` inputs, ``loc:@`` colocation, ``shared_name`` / ``debug_name``), with every
block's ``train`` and ``init`` joined under NoOps ``train`` and ``init``. Generation is
deterministic; only building the block imports TensorFlow. Graphs are cached (a temp
directory, or beside ``--graph``) and reused.

``--wide`` also measures the same graphs plus one NoOp ``update_all`` that waits for every
update of every block, as the final ``group`` of a single optimizer over all variables
does: a consumer shared by thousands of update sites, which the blocks alone never have.

    .venv/bin/python tools/bench_tf.py                  # all three sizes, prints a table
    .venv/bin/python tools/bench_tf.py --quick          # the 1/4 size only
    .venv/bin/python tools/bench_tf.py --graph /data/bench.pb   # cache the graphs there
    .venv/bin/python tools/bench_tf.py --wide           # also the shared-consumer graphs
    .venv/bin/python tools/bench_tf.py --profile        # also cProfile one rewrite (largest graph)

The children import optrewrite from this checkout (PYTHONPATH), with the running Python.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from optrewrite.tf import proto  # noqa: E402

GENERATOR_VERSION = 1  # bump when the block or the replication changes: invalidates caches
TARGET_NODES = 200_000
MIN_UPDATES = 2_000
REPEATS = 3
PREFIX_DIGITS = 4
PLACEHOLDER = b"blk" + b"0" * PREFIX_DIGITS + b"/"  # block 0's prefix, substituted per block
SPEC = """\
version: 1
guard: {}                   # every variable
clip:
  - variables: ["blk???0/*"]  # every tenth block: blk0000/, blk0010/, ...
    max_norm: 1.0
"""


def block_prefix(index: int) -> str:
    return f"blk{index:0{PREFIX_DIGITS}d}/"


# --------------------------------------------------------------------------- the graph


def build_block() -> bytes:
    """One small training step in tf.compat.v1, exported as a serialized GraphDef."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf  # noqa: PLC0415  (only here: the benchmark itself needs no TF)

    v1 = tf.compat.v1
    batch, features, hidden, vocab, emb = 8, 16, 16, 64, 8
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(1)
        x = v1.placeholder(tf.float32, [batch, features], name="x")
        ids = v1.placeholder(tf.int32, [batch], name="ids")
        y = v1.placeholder(tf.float32, [batch], name="y")
        init = v1.initializers.truncated_normal(stddev=0.1, seed=1)

        def variable(name: str, shape: list[int], resource: bool, initializer: Any = init) -> Any:
            return v1.get_variable(name, shape, initializer=initializer, use_resource=resource)

        def dense(name: str, h: Any, width: int, resource: bool) -> tuple[Any, list[Any]]:
            with v1.variable_scope(name):
                kernel = variable("kernel", [int(h.shape[1]), width], resource)
                bias = variable("bias", [width], resource, v1.zeros_initializer())
            return tf.nn.relu(tf.matmul(h, kernel) + bias), [kernel, bias]

        emb_ref = variable("emb_ref", [vocab, emb], False)  # sparse gradient, ref variable
        emb_res = variable("emb_res", [vocab, emb], True)  # sparse gradient, resource variable
        h = tf.concat([x, tf.nn.embedding_lookup(emb_ref, ids), tf.nn.embedding_lookup(emb_res, ids)], 1)
        by_optimizer: dict[str, list[Any]] = {"Momentum": [], "Adam": [emb_res], "GradientDescent": [emb_ref]}
        for name, resource, opt in [("ref0", False, "Momentum"), ("ref1", False, "GradientDescent"),
                                    ("res0", True, "Adam"), ("res1", True, "Momentum")]:  # fmt: skip
            h, made = dense(name, h, hidden, resource)
            by_optimizer[opt] += made
        out, made = dense("head", h, 1, False)
        by_optimizer["Adam"] += made
        loss = tf.reduce_mean(tf.square(tf.squeeze(out, 1) - y))

        global_step = v1.train.get_or_create_global_step()
        optimizers = {
            "Momentum": v1.train.MomentumOptimizer(0.01, momentum=0.9),
            "Adam": v1.train.AdamOptimizer(0.001),
            "GradientDescent": v1.train.GradientDescentOptimizer(0.1),
        }
        variables = [v for vs in by_optimizer.values() for v in vs]
        grads = dict(zip(variables, tf.gradients(loss, variables)))
        updates = [
            optimizers[opt].apply_gradients([(grads[v], v) for v in vs], name=opt)
            for opt, vs in by_optimizer.items()
        ]
        with tf.control_dependencies(updates):
            step = v1.assign_add(global_step, 1)
        with tf.control_dependencies([step]):
            tf.no_op(name="train")
        v1.global_variables_initializer()  # named "init"
    return graph.as_graph_def().SerializeToString(deterministic=True)


def _rename(name: str, prefix: str) -> str:
    return f"^{prefix}{name[1:]}" if name.startswith("^") else prefix + name


@dataclass(frozen=True)
class Block:
    """The serialized training block and what optrewrite finds in it."""

    raw: bytes
    nodes: int
    updates: int
    sinks: tuple[str, ...]  # the update nodes the rest of the step waits for

    @classmethod
    def inspect(cls, raw: bytes) -> Block:
        from optrewrite.tf.graph import GraphEditor  # noqa: PLC0415
        from optrewrite.tf.sites import find_update_sites  # noqa: PLC0415

        block = proto.GraphDef()
        block.ParseFromString(raw)
        found = find_update_sites(GraphEditor(block))
        sites, skips = found.sites, found.skips
        if skips:
            raise RuntimeError(f"the block has updates optrewrite skips: {skips}")
        return cls(raw, len(block.node), len(sites), tuple(s for site in sites for s in site.sinks))

    def graph_nodes(self, blocks: int, *, wide: bool) -> int:
        return blocks * self.nodes + (3 if wide else 2)


def replicate(blk: Block, blocks: int, *, wide: bool = False) -> bytes:
    """``blocks`` copies of the block under distinct prefixes, joined under ``train``/``init``.

    ``wide`` also adds a NoOp ``update_all`` waiting for every update of every block (which
    ``train`` then waits for), as the final ``group`` of one optimizer over all variables
    does: one consumer shared by thousands of updates.

    Block 0 is renamed through the protobuf API. Every prefix has the same length, so block
    k's bytes are block 0's with the prefix substituted: no length field changes. The
    prefix's occurrences are counted first, so a stray match (inside a tensor, say) fails
    loudly instead of corrupting the graph.
    """
    block = proto.GraphDef()
    block.ParseFromString(blk.raw)
    for name in ("train", "init"):
        if not any(n.name == name for n in block.node):
            raise RuntimeError(f"the block has no node {name!r}")
    first = block_prefix(0)
    renamed = 0
    for node in block.node:
        node.name = first + node.name
        inputs = [_rename(i, first) for i in node.input]
        del node.input[:]
        node.input.extend(inputs)
        renamed += 1 + len(inputs)
        if "_class" in node.attr:
            locs = node.attr["_class"].list.s
            new = [b"loc:@" + first.encode() + s[5:] if s.startswith(b"loc:@") else s for s in locs]
            renamed += sum(s.startswith(b"loc:@") for s in locs)
            del locs[:]
            locs.extend(new)
        for key in ("shared_name", "debug_name"):  # resource variables' runtime names
            if key in node.attr and node.attr[key].s:
                node.attr[key].s = first.encode() + node.attr[key].s
                renamed += 1
    nodes_only = proto.GraphDef()
    nodes_only.node.extend(block.node)
    template = nodes_only.SerializeToString(deterministic=True)
    if template.count(PLACEHOLDER) != renamed:
        raise RuntimeError(f"the prefix {PLACEHOLDER!r} occurs in the block other than as a name")

    tail = proto.GraphDef()
    tail.versions.CopyFrom(block.versions)
    train = tail.node.add(name="train", op="NoOp")
    train.input.extend(f"^{block_prefix(k)}train" for k in range(blocks))
    init = tail.node.add(name="init", op="NoOp")
    init.input.extend(f"^{block_prefix(k)}init" for k in range(blocks))
    if wide:
        every = tail.node.add(name="update_all", op="NoOp")
        every.input.extend(f"^{block_prefix(k)}{sink}" for k in range(blocks) for sink in blk.sinks)
        train.input.append("^update_all")
    # Concatenated serialized GraphDefs parse as one: their repeated `node` fields append.
    parts = [template.replace(PLACEHOLDER, block_prefix(k).encode()) for k in range(blocks)]
    parts.append(tail.SerializeToString(deterministic=True))
    return b"".join(parts)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class GraphCache:
    """Where the block and the generated graphs live; each is built once and reused."""

    def __init__(self, graph: Path | None) -> None:
        self.full = graph
        self.dir = graph.parent if graph else Path(tempfile.gettempdir()) / f"optrewrite-bench-v{GENERATOR_VERSION}"
        self.stem = graph.stem if graph else "graph"

    def block(self) -> Block:
        path = self.dir / f"{self.stem}.block.pb"
        if not path.exists():
            print(f"building the training block with TensorFlow -> {path}", file=sys.stderr)
            _write_atomic(path, build_block())
        return Block.inspect(path.read_bytes())

    def graph(self, blk: Block, blocks: int, *, wide: bool, full: bool) -> Path:
        if full and not wide and self.full:
            path = self.full
        else:
            path = self.dir / f"{self.stem}{'.wide' if wide else ''}.{blocks}blocks.pb"
        if not path.exists():
            start = time.perf_counter()
            _write_atomic(path, replicate(blk, blocks, wide=wide))
            print(f"generated {path} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return path


# --------------------------------------------------------------------------- measuring

FLOOR = """\
import sys
from pathlib import Path
from optrewrite.fileio import write_atomic
from optrewrite.tf import proto
graph = proto.GraphDef()
graph.ParseFromString(Path(sys.argv[1]).read_bytes())
nodes = chars = 0
for node in graph.node:
    chars += len(node.name) + len(node.op)
    nodes += 1
write_atomic(Path(sys.argv[2]), graph.SerializeToString())
print(nodes)
"""


@dataclass(frozen=True)
class Sample:
    wall_s: float
    peak_rss_mb: float


# A fresh, small process times the command and reads its peak RSS. Measuring from this
# process directly would be wrong on Linux: a child's ru_maxrss starts at the RSS of the
# process it was forked from (exec keeps the high-water mark), and this one may have
# imported TensorFlow.
TIMER = """\
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "wall_s": wall, "maxrss": maxrss}, f)
"""


def run_measured(argv: Sequence[str], log: Path) -> Sample:
    """Run ``argv`` (stdout and stderr to ``log``); its wall time and its peak RSS."""
    result = log.with_suffix(".time.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-c", TIMER, str(result), *argv], stdout=out, stderr=out, check=True, env=env)
    measured = json.loads(result.read_text())
    if measured["code"] != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {measured['code']}:\n{log.read_text(errors='replace')[-2000:]}")
    kib = measured["maxrss"] / 1024 if sys.platform == "darwin" else measured["maxrss"]  # bytes on macOS
    return Sample(measured["wall_s"], kib / 1024)


@dataclass(frozen=True)
class Row:
    label: str
    blocks: int
    nodes: int
    updates: int
    guarded: int
    clipped: int
    floor: Sample
    rewrite: Sample
    explain: Sample
    dry_run: Sample
    check: Sample

    @property
    def ratio(self) -> float:
        return self.rewrite.wall_s / self.floor.wall_s


def _median(samples: list[Sample]) -> Sample:
    return Sample(statistics.median(s.wall_s for s in samples), statistics.median(s.peak_rss_mb for s in samples))


def bench(label: str, graph: Path, blocks: int, expect_nodes: int, work: Path) -> Row:
    py = sys.executable
    spec = work / "spec.yaml"
    spec.write_text(SPEC)
    out, report, floor_out = work / "out.pb", work / "report.json", work / "floor.pb"
    graph.read_bytes()  # warm the page cache: the first run should not pay for the disk
    floors: list[Sample] = []
    rewrites: list[Sample] = []
    explains: list[Sample] = []
    dry_runs: list[Sample] = []
    checks: list[Sample] = []
    for _ in range(REPEATS):
        floors.append(run_measured([py, "-c", FLOOR, str(graph), str(floor_out)], work / "floor.log"))
        rewrites.append(run_measured(
            [py, "-m", "optrewrite", str(graph), "--spec", str(spec), "-o", str(out), "--report", str(report), "-q"],
            work / "rewrite.log",
        ))  # fmt: skip
        explains.append(run_measured([py, "-m", "optrewrite", "explain", str(graph), "--spec", str(spec)],
                                     work / "explain.log"))
        dry_runs.append(run_measured([py, "-m", "optrewrite", str(graph), "--spec", str(spec), "--dry-run", "-q"],
                                     work / "dry-run.log"))
        checks.append(run_measured([py, "-m", "optrewrite", str(out), "--spec", str(spec), "--check", "-q"],
                                   work / "check.log"))
    nodes = int((work / "floor.log").read_text().split()[-1])
    if nodes != expect_nodes:
        raise RuntimeError(f"{graph} has {nodes} nodes, expected {expect_nodes}: a stale cache? delete it")
    counts = json.loads(report.read_text())["counts"]
    for path in (out, floor_out):
        path.unlink()
    return Row(label, blocks, nodes, counts["updates_found"], counts["guarded"], counts["clipped"],
               _median(floors), _median(rewrites), _median(explains), _median(dry_runs), _median(checks))  # fmt: skip


def verify(graph: Path, row: Row, work: Path) -> None:
    """One rewrite with ``--verify`` (its child process included) against the row's rewrite."""
    out = work / "out.pb"
    sample = run_measured(
        [sys.executable, "-m", "optrewrite", str(graph), "--spec", str(work / "spec.yaml"), "-o", str(out),
         "--verify", "--verify-timeout", "1200", "-q"],
        work / "verify.log",
    )  # fmt: skip
    out.unlink()
    print(f"\n--verify, {row.label} size: {sample.wall_s:.1f} s ({sample.wall_s / row.rewrite.wall_s:.1f}× the "
          f"rewrite), peak RSS {sample.peak_rss_mb:.0f} MB (the largest process, the verification child included)")


def profile(graph: Path, work: Path, top: int = 25) -> None:
    """cProfile one rewrite in a fresh process and print the top functions by own time."""
    import pstats  # noqa: PLC0415

    spec = work / "spec.yaml"
    stats = work / "rewrite.prof"
    run_measured(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "optrewrite", str(graph),
         "--spec", str(spec), "-o", str(work / "out.pb"), "-q"],
        work / "profile.log",
    )  # fmt: skip
    (work / "out.pb").unlink()
    print(f"\ncProfile of one rewrite of {graph.name} (profiling slows it down), top {top} by own time:\n")
    pstats.Stats(str(stats), stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(top)


# --------------------------------------------------------------------------- output


def table(rows: list[Row]) -> str:
    lines = [
        "| size | nodes | updates | floor s | rewrite s | ratio | floor peak RSS MB | rewrite peak RSS MB "
        "| floor µs/node | rewrite µs/node | explain s | explain × floor | dry-run s | dry-run × floor "
        "| check s | check × floor |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.nodes:,} | {r.updates:,} | {r.floor.wall_s:.2f} | {r.rewrite.wall_s:.2f} "
            f"| {r.ratio:.2f}× | {r.floor.peak_rss_mb:.0f} | {r.rewrite.peak_rss_mb:.0f} "
            f"| {r.floor.wall_s / r.nodes * 1e6:.1f} | {r.rewrite.wall_s / r.nodes * 1e6:.1f} "
            f"| {r.explain.wall_s:.2f} | {r.explain.wall_s / r.floor.wall_s:.2f}× "
            f"| {r.dry_run.wall_s:.2f} | {r.dry_run.wall_s / r.floor.wall_s:.2f}× "
            f"| {r.check.wall_s:.2f} | {r.check.wall_s / r.floor.wall_s:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the smallest (1/4) size")
    parser.add_argument("--graph", type=Path, help="cache the full-size graph here (the others beside it)")
    parser.add_argument("--wide", action="store_true",
                        help="also measure the graphs with one NoOp waiting for every update")
    parser.add_argument("--profile", action="store_true", help="also cProfile one rewrite of the largest graph")
    parser.add_argument("--verify", action="store_true",
                        help="also time one rewrite with --verify of the largest graph (minutes at full size)")
    args = parser.parse_args(argv)

    cache = GraphCache(args.graph)
    blk = cache.block()
    full = max(round(TARGET_NODES / blk.nodes), -(-MIN_UPDATES // blk.updates))
    sizes = [("1/4", full // 4)] if args.quick else [("1/4", full // 4), ("1/2", full // 2), ("1", full)]
    print(f"block: {blk.nodes} nodes, {blk.updates} updates; full size: {full} blocks", file=sys.stderr)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="optrewrite-bench-") as tmp:
        work = Path(tmp)
        for wide in (False, True) if args.wide else (False,):
            for label, blocks in sizes:
                graph = cache.graph(blk, blocks, wide=wide, full=blocks == full)
                label = f"{label} wide" if wide else label
                print(f"measuring {label}: {graph} ({REPEATS}x floor and rewrite)", file=sys.stderr)
                row = bench(label, graph, blocks, blk.graph_nodes(blocks, wide=wide), work)
                expect = blocks * blk.updates
                if (row.updates, row.guarded) != (expect, expect):
                    raise RuntimeError(f"expected {expect} updates found and guarded, got {row}")
                rows.append(row)
        print(
            f"\nrewrite: guard every variable, clip every tenth block's "
            f"({rows[-1].clipped:,} of {rows[-1].updates:,} updates at the largest size); "
            f"median of {REPEATS}, whole-process wall time and peak RSS; "
            f"python {sys.version.split()[0]}, protobuf {_protobuf()}, {os.cpu_count()} CPUs\n"
        )
        print(table(rows))
        if args.verify:
            verify(cache.graph(blk, sizes[-1][1], wide=args.wide, full=sizes[-1][1] == full), rows[-1], work)
        if args.profile:
            profile(cache.graph(blk, sizes[-1][1], wide=args.wide, full=sizes[-1][1] == full), work)
    return 0


def _protobuf() -> str:
    from google.protobuf import __version__  # noqa: PLC0415
    from google.protobuf.internal import api_implementation  # noqa: PLC0415

    return f"{__version__} ({api_implementation.Type()})"


if __name__ == "__main__":
    sys.exit(main())
