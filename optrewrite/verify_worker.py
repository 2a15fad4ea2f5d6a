"""The process ``--verify`` runs graphs in: ``main([PACKAGE_DIR, MODULE])``.

Started by :func:`optrewrite.verify.run_isolated`, never by hand (``python -m
optrewrite.verify_worker MODULE`` runs it too). It imports ``MODULE`` (a
format's verify module) and calls its ``prepare()``, which imports the runtime once and
returns the runtime's name; then, for each request read from stdin, it forks a child that
lowers its limits (:func:`limit`) and calls ``MODULE.<function>(request)``, and answers
with one JSON line on stdout: the function's JSON result, its VerificationFailed message,
or how the child ended (killed, crashed, stopped after the time limit). The graph never
runs in this process, only in the child, so a crash, a hang or a memory blow-up ends the
child alone. Where ``os.fork`` is missing or unsafe (not Linux), the request runs in this
process, which then exits; the parent starts a fresh one for the next request.

Protocol: requests are an 8-byte big-endian length and a pickle, written by the parent
(which trusts itself); answers are JSON, which the parent parses without unpickling
anything this process produced. stdin and stdout are the protocol's alone: what the
runtime prints goes to stderr.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import select
import signal
import sys
import time
from typing import Any, BinaryIO

_FORK = hasattr(os, "fork") and sys.platform.startswith("linux")
_MAX_ANSWER = 1 << 20


def limit(memory: int | None, cpu_s: float | None) -> None:
    """Lower this process's limits: at most ``memory`` bytes of address space more than it
    has now, ``cpu_s`` seconds of CPU, no file larger than 0 bytes (writes fail, they do not
    kill), no core file; on Linux, die with the process that forked it."""
    try:
        import resource  # noqa: PLC0415
    except ImportError:  # not POSIX: the parent's time limit alone
        return

    def lower(which: int, soft: int, hard: int | None = None) -> None:
        _, current_hard = resource.getrlimit(which)
        hard = soft if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass

    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG
    lower(resource.RLIMIT_FSIZE, 0)
    lower(resource.RLIMIT_CORE, 0)
    if memory:
        lower(resource.RLIMIT_AS, _address_space() + memory)
    if cpu_s:
        lower(resource.RLIMIT_CPU, math.ceil(cpu_s), math.ceil(cpu_s) + 5)
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # noqa: PLC0415

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _address_space() -> int:
    """This process's virtual memory size in bytes (0 where /proc does not say)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _call(module: Any, frame: dict[str, Any]) -> dict[str, Any]:
    """Run one request in this process: its result, or its failure as the parent shows it."""
    from optrewrite.verify import NotVerifiable, VerificationFailed  # noqa: PLC0415

    try:
        return {"result": getattr(module, frame["function"])(frame["request"])}
    except NotVerifiable as exc:
        return {"failed": str(exc), "refused": True}
    except VerificationFailed as exc:
        return {"failed": str(exc)}
    except MemoryError:
        return {"failed": "ran out of memory (MemoryError)"}
    except BaseException as exc:  # noqa: BLE001 - the message may quote data: the class only
        return {"failed": f"{type(exc).__name__} in the verification process"}


def _forked(module: Any, frame: dict[str, Any], channels: tuple[int, ...]) -> dict[str, Any]:
    """Run one request in a forked child under its limits; what it answered or how it ended."""
    timeout_s = float(frame["timeout_s"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            for fd in channels:
                os.close(fd)
            limit(frame.get("memory"), frame.get("cpu_s"))
            answer = json.dumps(_call(module, frame)).encode()
            view = memoryview(answer)
            while view:
                view = view[os.write(w, view):]
        except BaseException:  # noqa: BLE001
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout_s + float(frame.get("grace_s", 5.0))
    chunks: list[bytes] = []
    size = 0
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                timed_out = True
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size <= _MAX_ANSWER:
                chunks.append(chunk)
    finally:
        os.close(r)
        if timed_out:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
    if timed_out:
        return {"timeout": timeout_s}
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    try:
        answer = json.loads(b"".join(chunks)) if size <= _MAX_ANSWER else None
    except ValueError:
        answer = None
    if code != 0 or not isinstance(answer, dict):
        return {"exit": code}
    return answer


def _read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    body = stream.read(int.from_bytes(head, "big"))
    return pickle.loads(body)  # noqa: S301 - written by the parent process


def main(argv: list[str]) -> int:
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # what the runtime prints goes to stderr, not into the answers

    def answer(message: dict[str, Any]) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    try:
        module = importlib.import_module(argv[1])
        runtime = module.prepare()
    except BaseException as exc:  # noqa: BLE001
        answer({"error": f"{type(exc).__name__}: {exc}"[:300]})
        return 1
    answer({"ready": runtime, "fork": _FORK})
    channels = (inp.fileno(), out.fileno())
    while True:
        frame = _read_frame(inp)
        if frame is None:
            return 0
        if _FORK:
            answer(_forked(module, frame, channels))
            continue
        limit(frame.get("memory"), frame.get("cpu_s"))
        answer(_call(module, frame))
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
