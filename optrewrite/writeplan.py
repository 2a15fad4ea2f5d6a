"""One write plan per run: every file a run writes, checked before anything is written, and
written all or nothing.

A run registers what it reads (:meth:`WritePlan.read`: the input graph, its external data,
the spec) and what it will write (:meth:`WritePlan.write`: the output graph, the external
data copied beside it, the report, the drawing). Each registration is checked at once
against every other by file identity: the resolved path (symlinks followed, ``..`` folded)
and, for files that exist, ``st_dev``/``st_ino`` (hard links). A write onto a read, or two
writes onto one file, is an :class:`~optrewrite.errors.InputError` naming both roles, raised
before anything is written.

Then :meth:`WritePlan.stage` writes each file's bytes to a temporary name beside its target,
``.<name>.optrewrite-<pid>-<random>.tmp`` (created exclusively, so it replaces nothing), and
:meth:`WritePlan.commit` renames them all into place at the end. Any failure before that —
an exception from a check or ``--verify``, a full disk, an interrupt — leaves what
:meth:`WritePlan.abort` removes: every temporary file and every file and folder the run
created. The renames themselves run with SIGINT, SIGTERM and SIGHUP held back; a rename
that fails puts back what the renames before it replaced (kept by a hard link while they
run).

A file the plan copies (:meth:`WritePlan.stage_copy`: external data) gets its source's
permission bits, as ``shutil.copymode`` gives, and is a copy of the bytes, never a link.

A process killed outright (SIGKILL, a power cut) leaves its temporary names. A later run
that writes the same target removes those it owns (same user) whose process is gone — the
pid in the name is not running on this machine — or that were last modified more than
:data:`STALE_AFTER_S` ago (a pid reused by another process).
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable

from optrewrite.errors import InputError

TEMP_TAG = "optrewrite"
STALE_AFTER_S = 24 * 3600  # a temporary file of a live pid older than this is stale too
_NAME_BYTES = 180  # of the target's name kept in a temporary name (file names hold 255 bytes)
_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Entry:
    path: Path  # as given (for messages)
    role: str  # "the input graph", "the report", ...
    resolved: Path
    ident: tuple[int, int] | None  # (st_dev, st_ino) when it exists


def _entry(path: Path, role: str) -> _Entry:
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError):
        resolved = Path(os.path.abspath(path))
    try:
        st = os.stat(path)
        ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        ident = None
    return _Entry(Path(path), role, resolved, ident)


def _same(a: _Entry, b: _Entry) -> bool:
    return a.resolved == b.resolved or (a.ident is not None and a.ident == b.ident)


def _overwrites(write: _Entry, read: _Entry) -> bool:
    """Writing ``write`` replaces ``read``: the same file, or a directory that holds it (an
    output written as a directory replaces what was in it)."""
    return _same(write, read) or write.resolved in read.resolved.parents


def cannot_write(path: Path, exc: OSError) -> InputError:
    return InputError(f"{path}: cannot write: {exc.strerror or exc}")


def check_writable(path: Path) -> None:
    """``path`` names a file in an existing directory (checked before anything is written)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if not directory.is_dir():
            raise InputError(f"{path}: the directory {directory} does not exist")
        if path.is_dir():
            raise InputError(f"{path}: is a directory; name a file")
    except OSError as exc:  # a name too long, a loop of links, ...
        raise cannot_write(path, exc) from None


def temp_name(target: Path) -> Path:
    """A fresh temporary name beside ``target``: ``.<name>.optrewrite-<pid>-<random>.tmp``."""
    return target.with_name(f".{_short(target.name)}.{TEMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _short(name: str) -> str:
    """``name`` cut to :data:`_NAME_BYTES` bytes, so that the temporary name stays a legal name."""
    raw = os.fsencode(name)
    return name if len(raw) <= _NAME_BYTES else raw[:_NAME_BYTES].decode("utf-8", "ignore")


def _temp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(_short(target.name))}\.{TEMP_TAG}-(?P<pid>[0-9]+)-[0-9a-f]{{8}}\.tmp")


def _pid_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def remove_stale(target: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files a killed run left beside ``target`` (see the module's doc).

    Only regular files and directories (a SavedModel's) of this user are removed, never a
    link; returns what was removed.
    """
    directory = target.parent if str(target.parent) else Path(".")
    pattern = _temp_pattern(target)
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        path = directory / name
        pid = int(m.group("pid"))
        try:
            st = os.lstat(path)
            kind = st.st_mode
            if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)) or st.st_uid != os.geteuid() or pid == os.getpid():
                continue
            if _pid_running(pid) and now - st.st_mtime <= STALE_AFTER_S:
                continue
            if stat.S_ISDIR(kind):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    return removed


def _write_chunk(fd: int, data: memoryview) -> int:
    return os.write(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[_write_chunk(fd, view[:_CHUNK]):]


def _copy_bytes(src_fd: int, dst_fd: int) -> None:
    """Copy the rest of ``src_fd`` to ``dst_fd`` (sendfile where the OS has it)."""
    copied = 0
    if hasattr(os, "sendfile"):
        try:
            while True:
                sent = os.sendfile(dst_fd, src_fd, None, 1 << 30)
                if sent == 0:
                    return
                copied += sent
        except OSError as exc:
            if copied or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
                raise
    while True:
        chunk = os.read(src_fd, _CHUNK)
        if not chunk:
            return
        _write_all(dst_fd, chunk)


class _Held:
    """SIGINT, SIGTERM and SIGHUP held back (delivered when it ends), where the OS allows."""

    def __enter__(self) -> None:
        self.old = None
        if hasattr(signal, "pthread_sigmask"):
            self.old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


class WritePlan:
    """Every file one run reads and writes; see the module's doc.

    Use as a context manager: leaving it with an exception (or without :meth:`commit`)
    removes everything the run wrote.
    """

    def __init__(self) -> None:
        self._reads: list[_Entry] = []
        self._writes: list[_Entry] = []
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target), renamed by commit
        self._created: list[Path] = []  # files in place before commit (published), removed by abort
        self._dirs: list[Path] = []  # folders the run created, removed (when empty) by abort
        self.committed = False

    # ---------------------------------------------------------------- registering and checking
    def read(self, path: Path | str, role: str) -> None:
        """Register a file the run reads; InputError when a registered write is that file
        (or a directory holding it)."""
        new = _entry(Path(path), role)
        if any(e.path == new.path and e.role == role for e in self._reads):
            return
        for w in self._writes:
            if _overwrites(w, new):
                raise InputError(f"{w.path}: {w.role} would overwrite {role}")
        self._reads.append(new)

    def write(self, path: Path | str, role: str, *, check: bool = True, make_dirs: bool = False) -> None:
        """Register a file the run writes; InputError when it is (or is a directory holding)
        a file the run reads, is another file the run writes, or, with ``check``, names a
        directory or lies in a directory that does not exist (``make_dirs``: its missing
        folders are created when it is staged)."""
        new = _entry(Path(path), role)
        if any(e.path == new.path and e.role == role for e in self._writes):
            return
        for r in self._reads:
            if _overwrites(new, r):
                raise InputError(f"{new.path}: {role} would overwrite {r.role}")
        for w in self._writes:
            if _same(w, new):
                raise InputError(f"{new.path}: {role} would overwrite {w.role}")
        if check:
            try:
                if new.path.is_dir():
                    raise InputError(f"{new.path}: is a directory; name a file")
                if not make_dirs:
                    check_writable(new.path)
            except OSError as exc:  # a name too long, a loop of links, ...
                raise cannot_write(new.path, exc) from None
        self._writes.append(new)

    def writes(self, path: Path | str) -> bool:
        """Whether ``path`` is a registered write (same file)."""
        probe = _entry(Path(path), "")
        return any(_same(w, probe) for w in self._writes)

    # ---------------------------------------------------------------- writing
    def _target(self, path: Path) -> Path:
        assert self.writes(path), f"{path} is not a registered write"
        assert not self.committed, "the plan is committed"
        return path

    def _make_parents(self, target: Path) -> None:
        missing = []
        parent = target.parent
        while str(parent) and not parent.is_dir():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            self._dirs.append(folder)  # first, so that an interrupt cannot leave it unrecorded
            try:
                folder.mkdir()
            except OSError as exc:
                self._dirs.pop()
                raise cannot_write(target, exc) from None

    def _open_temp(self, target: Path) -> tuple[int, Path]:
        self._make_parents(target)
        remove_stale(target)
        tmp = temp_name(target)
        self._staged.append((tmp, target))  # first, so that an interrupt cannot leave it unrecorded
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            self._staged.pop()
            raise cannot_write(target, exc) from None
        return fd, tmp

    def stage(self, path: Path | str, data: bytes) -> Path:
        """Write ``data`` to a temporary name beside ``path`` (a registered write), synced to
        disk; it replaces ``path`` at :meth:`commit`. Returns the temporary path."""
        target = self._target(Path(path))
        fd, tmp = self._open_temp(target)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise cannot_write(target, exc) from None
        finally:
            os.close(fd)
        return tmp

    def stage_copy(self, source: Path, path: Path | str) -> Path:
        """Copy ``source``'s bytes and permission bits to a temporary name beside ``path``."""
        target = self._target(Path(path))
        try:
            src_fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None
        try:
            fd, tmp = self._open_temp(target)
            try:
                _copy_bytes(src_fd, fd)
                os.fchmod(fd, stat.S_IMODE(os.fstat(src_fd).st_mode))
                os.fsync(fd)
            except OSError as exc:
                raise cannot_write(target, exc) from None
            finally:
                os.close(fd)
        finally:
            os.close(src_fd)
        return tmp

    def stage_dir(self, path: Path | str) -> Path:
        """Create an empty temporary directory beside ``path`` (a registered write) for the
        caller to fill; it replaces ``path`` (a directory, or nothing) at :meth:`commit`."""
        target = self._target(Path(path))
        self._make_parents(target)
        remove_stale(target)
        tmp = temp_name(target)
        self._staged.append((tmp, target))
        try:
            os.mkdir(tmp, 0o777)
        except OSError as exc:
            self._staged.pop()
            raise cannot_write(target, exc) from None
        return tmp

    def publish(self, tmp: Path) -> None:
        """Move one staged file into place now (a file something staged later needs beside it,
        such as external data the output model is checked with). Its target must not exist;
        :meth:`abort` removes it again."""
        target = next(t for s, t in self._staged if s == tmp)
        if os.path.lexists(target):
            raise InputError(f"{target}: appeared while optrewrite was writing; run again")
        with _Held():
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise cannot_write(target, exc) from None
            self._staged = [(s, t) for s, t in self._staged if s != tmp]
            self._created.append(target)

    def commit(self) -> None:
        """Rename every staged file into place, in the order staged. A failing rename puts
        back what the ones before it replaced, then raises InputError."""
        assert not self.committed
        done: list[tuple[Path, Path | None]] = []  # (target, backup of what it replaced)
        with _Held():
            try:
                for tmp, target in self._staged:
                    try:
                        backup = self._backup(target)
                    except OSError as exc:
                        raise cannot_write(target, exc) from None
                    try:
                        os.replace(tmp, target)
                    except OSError as exc:
                        if backup is not None and os.path.isdir(backup) and not os.path.islink(backup):
                            os.replace(backup, target)  # a directory moved aside goes back
                        elif backup is not None:
                            _unlink(backup)
                        raise cannot_write(target, exc) from None
                    done.append((target, backup))
            except BaseException:
                for target, backup in reversed(done):
                    if backup is not None and os.path.isdir(backup) and not os.path.islink(backup):
                        _unlink(target)
                    if backup is not None:
                        try:
                            os.replace(backup, target)
                        except OSError:
                            pass
                    else:
                        _unlink(target)
                self._staged = self._staged[len(done):]
                raise
            for _, backup in done:
                if backup is not None:
                    _unlink(backup)
            self._staged = []
            self._created = []
            self._dirs = []
            self.committed = True

    @staticmethod
    def _backup(target: Path) -> Path | None:
        """A hard link to what ``target`` is now (a file or a symlink), to put back if the
        commit fails; None when there is nothing or the file system has no hard links. A
        directory is moved aside instead (a directory is replaced only by a directory)."""
        if not os.path.lexists(target):
            return None
        backup = temp_name(target)
        if os.path.isdir(target) and not os.path.islink(target):
            os.replace(target, backup)
            return backup
        try:
            os.link(target, backup, follow_symlinks=False)
        except OSError:
            return None
        return backup

    def abort(self) -> None:
        """Remove every temporary file, every published file and every folder the run created."""
        with _Held():
            for tmp, _ in self._staged:
                _unlink(tmp)
            for path in reversed(self._created):
                _unlink(path)
            for folder in reversed(self._dirs):
                try:
                    folder.rmdir()
                except OSError:
                    pass
            self._staged, self._created, self._dirs = [], [], []

    def __enter__(self) -> WritePlan:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.committed:
            self.abort()


def _unlink(path: Path) -> None:
    """Remove a file, a link or (a staged or replaced output) a directory tree; quietly."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def write_atomic(path: Path, data: bytes, *, verify: Callable[[Path], None] | None = None,
                 role: str = "the file") -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one;
    ``verify`` runs on the complete temporary file before it replaces anything."""
    with WritePlan() as plan:
        plan.write(path, role)
        tmp = plan.stage(path, data)
        if verify is not None:
            verify(tmp)
        plan.commit()


# Formats whose graphs name other files they read (ONNX external data, a SavedModel's
# directory), as module:function
# taking (path, raw, outcome) and returning [(path, role)]; the format's name picks the entry.
GRAPH_READS = {"ONNX": "optrewrite.onnx.io:data_reads",
               "TensorFlow SavedModel": "optrewrite.tf2.io:data_reads"}


def graph_reads(path: Path, raw: bytes | None = None, outcome: object = None) -> list[tuple[Path, str]]:
    """The files the graph at ``path`` (bytes ``raw``, read when not given) reads besides
    itself, with their roles; InputError when it names one it cannot use. ``outcome``, the
    graph's rewrite, lets the format use what it parsed."""
    import importlib  # noqa: PLC0415

    from optrewrite.formats import format_for  # noqa: PLC0415

    entry = GRAPH_READS.get(format_for(path).name)
    if entry is None:
        return []
    if raw is None:
        from optrewrite.formats import read_graph  # noqa: PLC0415

        raw = read_graph(path)
    module, _, name = entry.partition(":")
    return list(getattr(importlib.import_module(module), name)(path, raw, outcome))


def drawing_targets(path: Path, *, dot_installed: bool) -> list[tuple[Path, str]]:
    """What ``optrewrite explain --dot PATH`` may write: PATH (a ``.svg`` PATH: SVG only) and,
    with graphviz's ``dot`` installed, PATH.svg beside it."""
    if path.suffix.lower() == ".svg":
        return [(path, "the SVG drawing")]
    out = [(path, "the drawing")]
    if dot_installed:
        out.append((path.with_name(path.name + ".svg"), "the SVG drawing"))
    return out
