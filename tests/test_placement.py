"""Inserted nodes are placed with their update; clip writes are colocated with the variable."""
from __future__ import annotations

from pathlib import Path

from optrewrite.api import rewrite_file
from optrewrite.tf import io, proto
from optrewrite.tf.graph import TAG_ATTR

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _with_devices(src: Path, dst: Path) -> dict[str, str]:
    graph = io.load(src, src.read_bytes()).graph
    devices = {}
    for i, node in enumerate(graph.node):
        node.device = f"/job:ps/replica:0/task:{i % 3}/device:CPU:0"
        devices[node.name] = node.device
    dst.write_bytes(graph.SerializeToString(deterministic=True))
    return devices


def test_inserted_nodes_take_their_update_device_and_clip_writes_sit_with_the_variable(tmp_path: Path) -> None:
    case = FIXTURES / "momentum_ref_dense"
    devices = _with_devices(case / "input.pb", tmp_path / "in.pb")
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nguard: {}\nclip:\n  - variables: [dense/kernel]\n    dims: [1]\n"
                    "    max_norm: 1.0\n    use_locking: true\n")
    rewrite_file(tmp_path / "in.pb", spec, output=tmp_path / "out.pb")
    out = proto.GraphDef.FromString((tmp_path / "out.pb").read_bytes())
    by_name = {n.name: n for n in out.node}
    for name, device in devices.items():
        assert by_name[name].device == device  # kept
    inserted = [n for n in out.node if TAG_ATTR in n.attr and n.name != "optrewrite/plan"]
    assert inserted
    for node in inserted:
        scope = node.name.split("/optrewrite_")[0]
        update = next(n for n in devices if n.startswith(scope + "/Apply"))
        assert node.device == devices[update], node.name
    write = by_name["train/update_dense/kernel/optrewrite_clip_0/AssignSub"]
    assert list(write.attr["_class"].list.s) == [b"loc:@dense/kernel"]
    assert write.attr["use_locking"].b is True
    norm = by_name["train/update_dense/kernel/optrewrite_clip_0/clip_by_norm/Sum"]
    assert "_class" not in norm.attr  # colocate_with_variable: false


def test_colocate_with_variable_moves_the_norm_computation_too(tmp_path: Path) -> None:
    case = FIXTURES / "gd_ref_sparse_meta"
    rewrite_file(case / "input.meta", case / "spec.yaml", output=tmp_path / "out.meta")
    graph = io.load(tmp_path / "out.meta", (tmp_path / "out.meta").read_bytes()).graph
    clip_nodes = [n for n in graph.node if "/optrewrite_clip_0/" in n.name and n.op not in ("Const",)]
    assert clip_nodes and all(list(n.attr["_class"].list.s) == [b"loc:@emb"] for n in clip_nodes)
