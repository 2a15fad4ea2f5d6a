"""Loading and saving TensorFlow graphs: GraphDef and MetaGraphDef, binary or text.

The only module of the TF path that parses or serializes files. Binary output is spliced:
every node the rewrite did not touch is copied as the exact bytes it had in the input, so
untouched NodeDefs come out byte-identical even when the input was serialized with another
map order; changed and new nodes are serialized deterministically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import message as pb_message
from google.protobuf import text_format
from google.protobuf import unknown_fields

from optrewrite.errors import InputError, shorten
from optrewrite.tf import proto
from optrewrite.tf.graph import GraphError, Topology, build_topology

GRAPHDEF = "GraphDef"
METAGRAPH = "MetaGraphDef"
BINARY = "binary"
TEXT = "text"

TEXT_SUFFIXES = frozenset({".pbtxt", ".pbtext", ".txt", ".prototxt"})  # text format by name
_GRAPH_NODE_FIELD = 1  # GraphDef.node
_META_GRAPH_FIELD = 2  # MetaGraphDef.graph_def


@dataclass
class TfGraphFile:
    """A loaded TF graph file: its container, encoding, raw bytes and parsed messages."""

    path: Path
    container: str  # GRAPHDEF or METAGRAPH
    encoding: str  # BINARY or TEXT
    raw: bytes
    message: pb_message.Message  # the GraphDef, or the MetaGraphDef holding it
    graph: proto.GraphDef = field(repr=False)
    topology: Topology = field(repr=False)

    @property
    def format_name(self) -> str:
        return f"{self.container} ({self.encoding})"


def _fail(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}")


def looks_like_text(raw: bytes) -> bool:
    head = raw[:4096].lstrip()
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    first = head[:1]
    return first.isalpha() or first == b"#"


def _check_graph(path: Path, graph: proto.GraphDef, container: str) -> Topology:
    if len(unknown_fields.UnknownFieldSet(graph)):
        raise _fail(path, f"not a TensorFlow {container}: it holds fields the schema does not know")
    if not graph.node:
        raise _fail(path, f"the {container} holds no nodes")
    try:
        return build_topology(graph)
    except GraphError as exc:
        raise _fail(path, f"not a valid TensorFlow {container}: {exc}") from None


def _parse_binary(path: Path, raw: bytes, container: str) -> pb_message.Message:
    msg = proto.MetaGraphDef() if container == METAGRAPH else proto.GraphDef()
    try:
        msg.ParseFromString(raw)
    except (pb_message.DecodeError, RuntimeError, ValueError):
        raise _fail(path, f"not a binary TensorFlow {container} (truncated or corrupt)") from None
    return msg


def _parse_text(path: Path, raw: bytes, container: str) -> pb_message.Message:
    msg = proto.MetaGraphDef() if container == METAGRAPH else proto.GraphDef()
    try:
        text_format.Parse(raw.decode("utf-8"), msg)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"not a text TensorFlow {container}: {shorten(detail, 160)}") from None
    except RecursionError:  # the text parser descends recursively into nested messages
        raise _fail(path, f"not a text TensorFlow {container}: messages nested too deeply") from None
    return msg


def _text_container(raw: bytes) -> str:
    head = raw[:65536].decode("utf-8", "replace")
    for line in head.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = line.split()[0].rstrip(":{")
        return METAGRAPH if key in ("meta_info_def", "graph_def", "saver_def", "collection_def",
                                    "signature_def", "asset_file_def", "object_graph_def") else GRAPHDEF
    return GRAPHDEF


def load(path: Path, raw: bytes) -> TfGraphFile:
    """Parse ``raw`` (the bytes of ``path``) as a TF graph; the extension and content decide how.

    ``.meta`` is a MetaGraphDef, anything else a GraphDef (a text file says which by its first
    field). ``.pbtxt``-like extensions are text format; ``.pb`` and ``.meta`` are binary, or
    text when they do not parse as binary but read as text; other names go by content.
    Raises InputError on anything that is not a well-formed graph.
    """
    if not raw:
        raise _fail(path, "the file is empty")
    ext = path.suffix.lower()
    textual = looks_like_text(raw)
    if ext in TEXT_SUFFIXES:
        encodings = [TEXT]
    elif ext in (".pb", ".graphdef", ".meta"):
        encodings = [BINARY, TEXT] if textual else [BINARY]
    else:
        encodings = [TEXT, BINARY] if textual else [BINARY]
    first_error: InputError | None = None
    for encoding in encodings:
        if encoding == TEXT:
            container = METAGRAPH if ext == ".meta" else _text_container(raw)
            parse = _parse_text
        else:
            container = METAGRAPH if ext == ".meta" else GRAPHDEF
            parse = _parse_binary
        try:
            message = parse(path, raw, container)
            if container == GRAPHDEF and len(unknown_fields.UnknownFieldSet(message)):
                raise _fail(path, "not a TensorFlow GraphDef: it holds fields the schema does not know")
            break
        except InputError as exc:
            first_error = first_error or exc
    else:
        assert first_error is not None
        raise first_error
    text = encoding == TEXT
    if container == METAGRAPH:
        assert isinstance(message, proto.MetaGraphDef)
        if len(unknown_fields.UnknownFieldSet(message)):
            raise _fail(path, "not a TensorFlow MetaGraphDef: it holds fields the schema does not know")
        if not message.HasField("graph_def"):
            raise _fail(path, "the MetaGraphDef holds no graph_def")
        if not text and sum(1 for f in top_level_fields(raw) if f[0] == _META_GRAPH_FIELD) != 1:
            raise _fail(path, "the MetaGraphDef holds its graph_def in several pieces; re-export it")
        graph = message.graph_def
    else:
        assert isinstance(message, proto.GraphDef)
        graph = message
    topology = _check_graph(path, graph, container)
    return TfGraphFile(
        path=path,
        container=container,
        encoding=TEXT if text else BINARY,
        raw=raw,
        message=message,
        graph=graph,
        topology=topology,
    )


# ------------------------------------------------------------------------- saving


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def top_level_fields(buf: bytes) -> list[tuple[int, int, int, int]]:
    """Top-level fields of a serialized message: (field number, start, payload start, end).

    One-byte tags and lengths, by far the most common, are decoded inline: a 200k-node
    GraphDef is scanned field by field on every binary write.
    """
    fields = []
    pos, n = 0, len(buf)
    read = _read_varint
    while pos < n:
        start = pos
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read(buf, pos)
        wire = tag & 7
        payload = start
        if wire == 2:
            length = buf[pos]
            if length < 0x80:
                payload = pos + 1
            else:
                length, payload = read(buf, pos)
            pos = payload + length
        elif wire == 0:
            _, pos = read(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.append((tag >> 3, start, payload, pos))
    return fields


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def splice_graph(raw_graph: bytes, graph: proto.GraphDef, changed: set[int], first_new: int) -> bytes:
    """Serialize ``graph`` reusing ``raw_graph``'s bytes for every node not in ``changed``.

    ``graph.node[:first_new]`` are the input's nodes in input order; the rest are new and are
    written after the input's last node, then the input's other fields (versions, library).
    Protobuf readers accept fields in any order, and TF's own writers put nodes first.
    """
    fields = top_level_fields(raw_graph)
    nodes = [(start, end) for number, start, _p, end in fields if number == _GRAPH_NODE_FIELD]
    others = [(start, end) for number, start, _p, end in fields if number != _GRAPH_NODE_FIELD]
    if len(nodes) != first_new:
        raise AssertionError(f"found {len(nodes)} nodes in the input bytes, expected {first_new}")
    parts: list[bytes] = []
    run_start = 0  # first node of the current run of untouched nodes
    for i in sorted(changed):
        if run_start < i:
            parts.append(raw_graph[nodes[run_start][0]:nodes[i - 1][1]])
        parts.append(_length_delimited(_GRAPH_NODE_FIELD, graph.node[i].SerializeToString(deterministic=True)))
        run_start = i + 1
    if run_start < first_new:
        parts.append(raw_graph[nodes[run_start][0]:nodes[first_new - 1][1]])
    for node in graph.node[first_new:]:
        parts.append(_length_delimited(_GRAPH_NODE_FIELD, node.SerializeToString(deterministic=True)))
    parts.extend(raw_graph[a:b] for a, b in others)
    return b"".join(parts)


def serialize(loaded: TfGraphFile, changed: set[int], first_new: int) -> bytes:
    """The output bytes for ``loaded`` after its graph was edited in place."""
    if loaded.encoding == TEXT:
        return text_format.MessageToString(loaded.message).encode("utf-8")
    if loaded.container == GRAPHDEF:
        return splice_graph(loaded.raw, loaded.graph, changed, first_new)
    parts = []
    graph_fields = 0
    for number, start, payload, end in top_level_fields(loaded.raw):
        if number == _META_GRAPH_FIELD:
            graph_fields += 1
            new_graph = splice_graph(loaded.raw[payload:end], loaded.graph, changed, first_new)
            parts.append(_length_delimited(number, new_graph))
        else:
            parts.append(loaded.raw[start:end])
    if graph_fields != 1:
        raise AssertionError(f"MetaGraphDef has {graph_fields} graph_def fields")
    return b"".join(parts)
