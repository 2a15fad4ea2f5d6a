"""TensorFlow graphs (GraphDef or MetaGraphDef, binary or text) as an optrewrite format.

The fallback of :data:`optrewrite.formats.REGISTRY`: it claims every name no other format
claims, and its loader tells GraphDef from MetaGraphDef and binary from text (see
:func:`optrewrite.tf.io.load`). Nothing here imports TensorFlow; reading and writing needs
only the GraphDef schema, and only :meth:`TensorFlowFormat.verify` runs TensorFlow.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from optrewrite.formats import SingleFile

from optrewrite.errors import InputError

if TYPE_CHECKING:
    from optrewrite.core import Analysis, Outcome
    from optrewrite.spec import Spec
    from optrewrite.writeplan import WritePlan

# Golden files with these names hold binary graphs; other names hold text (optrewrite.testing).
BINARY_SUFFIXES = frozenset({".pb", ".graphdef", ".meta"})


class TensorFlowFormat(SingleFile):
    name = "TensorFlow"
    article = "a TensorFlow graph"

    def claims(self, path: Path) -> bool:
        return True

    def check_output(self, src: Path, out: Path) -> None:
        """An output named as another format's is refused before anything is read."""
        if out.suffix.lower() == ".onnx":
            raise InputError(f"{out}: names an ONNX model; write a TensorFlow graph as .pb, .pbtxt or .meta")
        super().check_output(src, out)

    def check_request(self, path: Path, spec: Spec | None, *, lower: bool) -> None:
        if lower or (spec is not None and spec.lower):
            raise InputError(f"{path}: lowering applies to ONNX models only")
        if spec is not None and spec.updates:
            raise InputError(f"{spec.source}: updates: names update sites of ONNX models only; "
                             f"{path} is a TensorFlow graph")

    def rewrite(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> Outcome:
        self.check_request(path, spec, lower=lower)
        from optrewrite.tf import io  # noqa: PLC0415
        from optrewrite.tf.rewrite import rewrite_tf  # noqa: PLC0415

        return rewrite_tf(io.load(path, raw), spec)

    def serialize(self, outcome: Outcome) -> bytes:
        from optrewrite.tf.rewrite import serialize  # noqa: PLC0415

        return serialize(outcome.graph)

    def save(self, outcome: Outcome, out: Path, *, check: Callable[[Path], None] | None = None,
             plan: WritePlan | None = None) -> None:
        """Stage the graph beside ``out``; ``check`` runs on the staged file. With ``plan`` the
        caller commits (or aborts) it; without, the graph is in place when this returns, or
        nothing is."""
        from contextlib import nullcontext  # noqa: PLC0415

        from optrewrite.writeplan import WritePlan  # noqa: PLC0415

        own = plan is None
        with WritePlan() if plan is None else nullcontext(plan) as plan:
            loaded = getattr(outcome.graph, "loaded", None)
            if loaded is not None:
                plan.read(loaded.path, "the input graph")
            plan.write(out, "the output graph")
            tmp = plan.stage(out, self.encoded(outcome, out))
            if check is not None:
                check(tmp)
            if own:
                plan.commit()

    def encoded(self, outcome: Outcome, out: Path) -> bytes:
        """The rewritten graph in the encoding ``out``'s name asks when it differs from the
        input's name: binary for ``.pb``, ``.graphdef``, ``.meta``; text for ``.pbtxt``-like
        names; the input's encoding otherwise (a text graph named ``.pb`` stays text). The
        container must read back as it is: a ``.meta`` holds a MetaGraphDef, a ``.pb`` or
        ``.graphdef`` a GraphDef."""
        from optrewrite import seal  # noqa: PLC0415
        from optrewrite.tf import io  # noqa: PLC0415
        from optrewrite.tf.rewrite import SEAL_MARKER, mark_for_seal  # noqa: PLC0415

        loaded = getattr(outcome.graph, "loaded", None)
        if loaded is None:
            return self.serialize(outcome)
        suffix = out.suffix.lower()
        if suffix == ".meta" and loaded.container != io.METAGRAPH:
            raise InputError(f"{out}: a .meta file holds a MetaGraphDef; the input is a GraphDef (name it .pb or .pbtxt)")
        if suffix in (".pb", ".graphdef") and loaded.container == io.METAGRAPH:
            raise InputError(f"{out}: a {suffix} file reads as a GraphDef; the input is a MetaGraphDef "
                             "(name it .meta, or .pbtxt for text)")
        if suffix == Path(loaded.path).suffix.lower():  # the input's own kind of name: its encoding
            return self.serialize(outcome)
        encoding = (io.BINARY if suffix in BINARY_SUFFIXES else io.TEXT if suffix in io.TEXT_SUFFIXES
                    else loaded.encoding)
        if encoding == loaded.encoding:
            return self.serialize(outcome)
        mark_for_seal(outcome.graph, binary=encoding == io.BINARY)
        if encoding == io.TEXT:
            from google.protobuf import text_format  # noqa: PLC0415

            return text_format.MessageToString(loaded.message).encode("utf-8")
        raw = loaded.message.SerializeToString(deterministic=True)
        return raw if outcome.graph.editor is None else seal.fill(raw, SEAL_MARKER, outcome.graph.seal_key)

    def sealed(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> str | None:
        """The report's format name when ``raw`` is a binary graph that this spec's rewrite
        wrote, by its seal (:mod:`optrewrite.seal`; nothing is parsed); None otherwise."""
        from optrewrite import seal  # noqa: PLC0415
        from optrewrite.tf import io  # noqa: PLC0415
        from optrewrite.tf.rewrite import SEAL_MARKER  # noqa: PLC0415

        if lower or io.looks_like_text(raw) or not seal.holds(raw, SEAL_MARKER, seal.spec_key(spec)):
            return None
        container = io.METAGRAPH if path.suffix.lower() == ".meta" else io.GRAPHDEF
        return f"{container} ({io.BINARY})"

    def analyse(self, path: Path, raw: bytes, spec: Spec | None, *, lower: bool) -> Analysis:
        self.check_request(path, spec, lower=lower)
        from optrewrite.tf.explain import analyse  # noqa: PLC0415

        return analyse(path, raw, spec)

    def diff(self, a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> list[str]:
        from optrewrite.tf.diff import diff_graphs  # noqa: PLC0415

        return diff_graphs(a, a_raw, b, b_raw)

    def verify(self, path: Path, like: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
        from optrewrite.tf.verify import verify_graph  # noqa: PLC0415

        return verify_graph(path, like, raw, seed=seed, timeout_s=timeout_s)

    def encode_as(self, actual: Path, raw: bytes, expected: Path) -> bytes:
        """Binary for ``.pb``, ``.graphdef`` and ``.meta`` (which must hold a MetaGraphDef),
        text format for any other name."""
        from google.protobuf import text_format  # noqa: PLC0415

        from optrewrite.tf import io  # noqa: PLC0415

        loaded = io.load(actual, raw)
        suffix = expected.suffix.lower()
        if suffix == ".meta" and loaded.container != io.METAGRAPH:
            raise InputError(f"{expected}: a .meta file holds a MetaGraphDef; {actual} holds a {loaded.container}")
        encoding = io.BINARY if suffix in BINARY_SUFFIXES else io.TEXT
        if encoding == loaded.encoding:
            return raw
        if encoding == io.TEXT:
            return text_format.MessageToString(loaded.message).encode("utf-8")
        return loaded.message.SerializeToString(deterministic=True)


TENSORFLOW = TensorFlowFormat()
