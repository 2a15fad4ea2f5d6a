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
``jobs.yaml:4: jobs[1]: missing key 'spec', and no --spec given``. Before anything runs, the
jobs' outputs must differ from one another and from everything a job reads
(:func:`check_jobs`).
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
    return jobs


def check_jobs(jobs: list[Job], *, writes: bool, manifest: Path | None = None, report: Path | None = None) -> None:
    """Before any job runs: no job writes (``writes``: the jobs write their graphs) onto what
    a job reads (its input, its spec), the manifest or another write, and the combined
    ``report`` onto none of them either; compared as the write plan does (resolved paths,
    hard links, a directory holding a file). InputError naming both."""
    from optrewrite.writeplan import WritePlan  # noqa: PLC0415

    plan = WritePlan()  # registers and checks only: nothing is staged
    if manifest is not None:
        plan.read(manifest, "the manifest")
    for job in jobs:
        plan.read(job.input, f"the input {job.input}")
        plan.read(job.spec, f"the spec {job.spec}")
    for k, job in enumerate(jobs if writes else ()):
        plan.write(job.target, f"the output of {job.input} (job {k + 1})", check=False)
    if report is not None:
        plan.write(report, "the report", check=False)
