"""A manifest: many rewrites, each with its own spec and output, in one run.

``optrewrite --manifest jobs.yaml [-j N] [--report all.json]`` reads::

    version: 1
    jobs:
      - input: graphs/tower.pb        # required
        spec: specs/wrap.yaml         # default: the command line's --spec
        output: out/tower.pb          # default: beside the input, as without -o
        lower: false                  # ONNX: as --lower (default: the command line's)

Relative paths are relative to the manifest's directory. The file is untrusted input like a
spec, loaded by the same safe YAML loader with the same bounds (:mod:`optrewrite.spec`), and
every problem is a one-line error naming the file, line and field, e.g.
``jobs.yaml:4: jobs[1].spec: missing, and no --spec given``. Before anything runs, the jobs'
outputs must differ from one another and from every job's input.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from optrewrite.errors import SpecError
from optrewrite.fileio import default_output, read_bounded
from optrewrite.spec import YamlNode, compose_yaml

MAX_MANIFEST_BYTES = 1 << 20
MAX_JOBS = 10_000
SUPPORTED_VERSIONS = (1,)


@dataclass(frozen=True)
class Job:
    input: Path
    spec: Path
    output: Path | None  # None: the input's default output
    lower: bool

    @property
    def target(self) -> Path:
        """Where the job writes its graph (a graph of no known format: where it would)."""
        if self.output is not None:
            return self.output
        from optrewrite.errors import InputError  # noqa: PLC0415
        from optrewrite.formats import output_for  # noqa: PLC0415

        try:
            return output_for(self.input)
        except InputError:  # the job's own run says what is wrong with its input
            return default_output(self.input)


def load_manifest(path: Path, *, spec: Path | None = None, lower: bool = False) -> list[Job]:
    """The manifest's jobs; ``spec`` and ``lower`` are the defaults of entries without them."""
    source = str(path)
    try:
        raw = read_bounded(path, MAX_MANIFEST_BYTES, "manifest")
    except OSError as exc:
        raise SpecError(source, "", f"cannot read manifest: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(source, "", "the manifest is not UTF-8 text") from None
    node = compose_yaml(text, source, "manifest")
    if node is None:
        raise SpecError(source, "", "the manifest is empty")
    root = YamlNode(source, node, "")
    keys = root.mapping(["version", "jobs"])
    if "version" not in keys:
        raise root.fail("missing required key 'version'")
    if keys["version"].integer() not in SUPPORTED_VERSIONS:
        raise keys["version"].fail(f"unsupported version (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    if "jobs" not in keys:
        raise root.fail("missing required key 'jobs'")
    entries = keys["jobs"].sequence(MAX_JOBS, "jobs")
    if not entries:
        raise keys["jobs"].fail("must list at least one job")
    base = path.parent
    jobs = []
    for entry in entries:
        fields = entry.mapping(["input", "spec", "output", "lower"])
        if "input" not in fields:
            raise entry.fail("missing required key 'input'")
        if "spec" in fields:
            job_spec = base / fields["spec"].string()
        elif spec is not None:
            job_spec = spec
        else:
            raise entry.fail("missing key 'spec', and no --spec given")
        jobs.append(Job(input=base / fields["input"].string(), spec=job_spec,
                        output=base / fields["output"].string() if "output" in fields else None,
                        lower=fields["lower"].boolean() if "lower" in fields else lower))
    problem = clash(jobs)
    if problem is not None:
        k, other, what = problem
        message = f"job {other} writes {jobs[k].target} too" if what == "output" else \
            f"{jobs[k].target} is the input of job {other}"
        raise SpecError(source, f"jobs[{k}].output", message, entries[k].line)
    return jobs


def clash(jobs: list[Job]) -> tuple[int, int, str] | None:
    """The first job ``k`` that writes what another job ``j`` writes or reads: ``(k, j,
    "output" | "input")``; None when every job writes its own file."""
    inputs = {job.input.resolve(): k for k, job in enumerate(jobs)}
    seen: dict[Path, int] = {}
    for k, job in enumerate(jobs):
        target = job.target.resolve()
        if target in seen:
            return k, seen[target], "output"
        if target in inputs and inputs[target] != k:
            return k, inputs[target], "input"
        seen[target] = k
    return None
