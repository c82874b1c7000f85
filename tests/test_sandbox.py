"""The code sandbox's operating-system boundary (medlm.tasks.sandbox, docs/sandbox.md).

Hostile snippets try each kind of escape with the in-process guards switched off, so what stops
them is the OS boundary alone; canaries outside the sandbox (a world-writable directory with a
world-writable file, a root-only file, sleeping processes, a listening 127.0.0.1 server) show
that nothing happened. Every test runs under each boundary this machine offers; the others are
skipped with the reason (the pytest header lists them too). Then: grading is the same behind
every boundary, and a program that cannot be started is reported as such, never as a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from medlm.tasks import sandbox as sandbox_module
from medlm.tasks.sandbox import BOUNDARIES, SANDBOX_UID, UNAVAILABLE, available_boundaries, run_sandboxed

SECRET = "medlm-canary-secret-5f3c"
IS_ROOT = os.geteuid() == 0


@pytest.fixture(params=BOUNDARIES)
def boundary(request) -> str:
    return _usable(request.param)


@pytest.fixture(params=[*BOUNDARIES, "none"])
def any_boundary(request) -> str:
    """The OS boundaries this machine offers, and "none" (the in-process guards alone)."""
    return request.param if request.param == "none" else _usable(request.param)


def _usable(name: str) -> str:
    problem = available_boundaries()[name]
    if problem is not None:
        print(f"sandbox boundary {name!r} not available here: {problem}")
        pytest.skip(f"sandbox boundary {name!r} not available on this machine: {problem}")
    return name


@dataclass
class Canary:
    base: Path  # world-writable (0777, no sticky bit): file permissions alone would let anyone in
    keep: Path  # world-writable file
    secret: Path  # readable by its owner only
    subdir: Path
    new: Path  # must never come to exist
    home: str
    home_entries: list
    sleepers: list  # processes that must survive
    listener: socket.socket  # a 127.0.0.1 server nobody may connect to

    def snapshot(self) -> dict:
        return {p.name: (p.is_dir(), p.stat().st_mode, None if p.is_dir() else p.read_bytes())
                for p in sorted(self.base.iterdir())}


@pytest.fixture(scope="module")
def canary():
    base = Path(tempfile.mkdtemp(prefix="medlm-canary-"))
    base.chmod(0o777)
    keep, secret, subdir = base / "keep.txt", base / "secret.txt", base / "dir"
    keep.write_text("canary")
    keep.chmod(0o666)
    secret.write_text(SECRET)
    secret.chmod(0o600)
    subdir.mkdir()
    subdir.chmod(0o777)
    home = os.path.expanduser("~")
    sleepers = [subprocess.Popen(["sleep", "120"])]
    if IS_ROOT:  # a process of the very user the sandbox runs as: only a PID namespace protects it
        sleepers.append(subprocess.Popen(["sleep", "120"], user=SANDBOX_UID, group=SANDBOX_UID, extra_groups=[]))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    c = Canary(base, keep, secret, subdir, Path(tempfile.gettempdir()) / f"medlm-escaped-{os.getpid()}",
               home, sorted(os.listdir(home)) if os.path.isdir(home) else [], sleepers, listener)
    yield c
    for p in sleepers:
        p.kill()
        p.wait()
    listener.close()
    shutil.rmtree(base, ignore_errors=True)
    c.new.unlink(missing_ok=True)


# kind of escape -> snippet; {names} are filled from the canary. The guards are off, so nothing in
# the interpreter stops these: a snippet that raises or "passes" is fine, the canary decides. Each
# does bounded harm if a boundary ever broke (no kill(-1): run as root without a boundary it kills
# every process on the machine).
ESCAPES = {
    "run a program: os.system": "import os\nos.system('touch {new}; rm -f {keep}')\n",
    "run a program: posix.system": "import posix\nposix.system('touch {new}')\n",
    "run a program: os.posix_spawn": "import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{new}'], {{}})\n"
                                      "os.wait()\n",
    "run a program: _posixsubprocess": "import subprocess\nsubprocess.run(['/usr/bin/touch', '{new}'])\n",
    "create a file: open": "open('{new}', 'w').write('x')\n",
    "create a file: _io.FileIO": "import _io\n_io.FileIO('{new}', 'w').write(b'x')\n",
    "create a file in a world-writable dir": "open('{base}/planted.txt', 'w').write('x')\n",
    "create a dir": "import posix\nposix.mkdir('{base}/newdir')\n",
    "change a file: append": "open('{keep}', 'a').write('tampered')\n",
    "change a file: _io.FileIO truncate": "import _io\n_io.FileIO('{keep}', 'w')\n",
    "change a file: chmod": "import posix\nposix.chmod('{keep}', 0o777)\n",
    "delete a file": "import posix\nposix.unlink('{keep}')\n",
    "delete a dir": "import posix\nposix.rmdir('{subdir}')\n",
    "rename a file": "import posix\nposix.rename('{keep}', '{base}/moved.txt')\n",
    "read a root-only file": "print(open('{secret}').read())\n",
    "read a root-only file: _io.FileIO": "import _io\nprint(_io.FileIO('{secret}').read())\n",
    "list the home directory": "import os\nprint(os.listdir('{home}'))\n",
    "signal another process": "import os\nfor pid in {pids}:\n    try:\n        os.kill(pid, 9)\n"
                              "    except OSError as e:\n        print(pid, e)\n",
    "connect to 127.0.0.1": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n",
    "connect to 127.0.0.1: _socket": "import _socket\ns = _socket.socket()\ns.settimeout(3)\n"
                                     "s.connect(('127.0.0.1', {port}))\n",
}


def _fill(snippet: str, c: Canary) -> str:
    return snippet.format(new=c.new, keep=c.keep, base=c.base, subdir=c.subdir, secret=c.secret, home=c.home,
                          pids=[p.pid for p in c.sleepers], port=c.listener.getsockname()[1])


@pytest.mark.parametrize("kind", list(ESCAPES))
def test_the_boundary_alone_contains_each_kind_of_escape(boundary, canary, kind):
    before = canary.snapshot()
    result = run_sandboxed(_fill(ESCAPES[kind], canary), boundary=boundary, in_process_guards=False,
                           timeout_s=15, memory_mb=256)
    assert not result.reason.startswith(UNAVAILABLE), result.reason  # it ran, behind the boundary
    assert result.boundary == boundary
    assert canary.snapshot() == before, (kind, result.reason, result.stderr[-500:])
    assert not canary.new.exists(), (kind, result.reason)
    assert SECRET not in result.stdout + result.stderr
    assert not any(repr(name) in result.stdout for name in canary.home_entries), result.stdout[-500:]
    assert all(p.poll() is None for p in canary.sleepers), "a process outside the sandbox was killed"
    with pytest.raises(BlockingIOError):  # nobody connected to the 127.0.0.1 server
        canary.listener.accept()


@pytest.mark.parametrize("kind, code, reason", [
    ("memory", "x = bytearray(1 << 40)\n", "memory"),
    ("memory, growing", "chunks = []\nwhile True:\n    chunks.append(bytes(10**7))\n", "memory"),
    ("cpu", "while True:\n    pass\n", "timeout"),
    # bounded, so that a broken boundary could not take the machine down: children exit at once
    ("fork bomb", "import os\nfor _ in range(200):\n    if os.fork() == 0:\n        os._exit(0)\n",
     "failed: BlockingIOError"),
])
def test_the_boundary_alone_contains_resource_exhaustion(boundary, canary, kind, code, reason):
    timeout = 1.5 if reason == "timeout" else 15
    result = run_sandboxed(code, boundary=boundary, in_process_guards=False, timeout_s=timeout, memory_mb=128)
    assert result.reason.startswith(reason), (kind, result.reason, result.stderr[-500:])
    assert result.duration_s < timeout + 2
    assert all(p.poll() is None for p in canary.sleepers)


def test_the_program_runs_as_an_unprivileged_user_without_network(boundary):
    code = ("import os, socket\nprint(os.getuid(), os.getgid(), os.getgroups())\n"
            "print(sorted(socket.if_nameindex()))\nprint(os.getpid())\n"
            "print(*[line.split()[1] for line in open('/proc/self/status') if line.startswith(('CapEff', 'CapBnd',"
            " 'NoNewPrivs'))])\n")
    result = run_sandboxed(code, boundary=boundary, in_process_guards=False, timeout_s=15)
    assert result.passed, (result.reason, result.stderr[-500:])
    ids, interfaces, pid, privileges = result.stdout.splitlines()
    if IS_ROOT:
        assert ids == f"{SANDBOX_UID} {SANDBOX_UID} []"
        assert privileges == "0000000000000000 0000000000000000 1"  # no capabilities, none to gain
    assert interfaces == "[(1, 'lo')]"  # a network namespace of its own: loopback only, and down
    assert int(pid) < 100  # a PID namespace of its own


# ---------------------------------------------------------------------------- same grading


@pytest.fixture(scope="module")
def humaneval():
    from medlm.tasks.humaneval import load_humaneval

    return load_humaneval()[:2]


def test_grading_is_the_same_behind_every_boundary(any_boundary, humaneval):
    from medlm.tasks.humaneval import check_completion

    for problem in humaneval:
        result = check_completion(problem, problem["canonical_solution"], timeout_s=15, boundary=any_boundary)
        assert result.passed and result.reason == "passed", (problem["task_id"], result.reason, result.stderr[-500:])
        assert result.boundary == any_boundary
    wrong = check_completion(humaneval[0], "    return None\n", timeout_s=15, boundary=any_boundary)
    assert not wrong.passed and wrong.reason.startswith("failed: AssertionError"), wrong.reason
    early = check_completion(humaneval[0], "    pass\nimport sys\nsys.exit(0)\n", timeout_s=15, boundary=any_boundary)
    assert early.reason == "failed: exited before the end of the program (SystemExit(0))"


def test_both_layers_report_the_named_routes(any_boundary, canary):
    """With the guards on (the default), the routes the guards used to miss are refused by name."""
    for code, reason in ((f"import posix\nposix.system('touch {canary.new}')\n", "forbidden: posix.system"),
                         (f"import _io\n_io.FileIO('{canary.new}', 'w')\n", "forbidden: FileIO writing"),
                         ("import posix\nposix.posix_spawn('/bin/true', ['true'], {})\n",
                          "forbidden: posix.posix_spawn")):
        result = run_sandboxed(code, boundary=any_boundary, timeout_s=15)
        assert result.reason.startswith(reason), (result.reason, result.stderr[-300:])
        assert not canary.new.exists()


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def fresh_probe():
    """Boundaries probed again under this test's PATH, and again after it."""
    available_boundaries.cache_clear()
    yield
    available_boundaries.cache_clear()


def test_no_boundary_means_the_program_is_not_run_unless_allowed(monkeypatch, tmp_path, fresh_probe):
    monkeypatch.setenv("PATH", str(tmp_path))  # none of the boundaries' tools can be found
    assert all(problem and "not found on PATH" in problem
               for name, problem in available_boundaries().items() if name != "unshare" or IS_ROOT)
    result = run_sandboxed("open('ran', 'w')\n", timeout_s=15)
    assert not result.passed and result.reason.startswith(f"{UNAVAILABLE} (no OS boundary on this machine: bwrap:")
    assert result.boundary == "none"
    allowed = run_sandboxed("pass\n", timeout_s=15, allow_unisolated=True)
    assert allowed.passed and allowed.boundary == "none"
    named = run_sandboxed("pass\n", timeout_s=15, boundary="bwrap")
    assert named.reason.startswith(f"{UNAVAILABLE} (bwrap: bwrap") and not named.passed
    with pytest.raises(ValueError, match="boundary must be one of"):
        run_sandboxed("pass\n", boundary="docker")


def test_a_boundary_the_kernel_refuses_is_reported_per_sample(boundary, monkeypatch, tmp_path):
    """The tool starts but refuses (as a kernel without user namespaces makes bwrap do): the
    sample says so, it is never a failed completion."""
    fake = tmp_path / ("bwrap" if boundary == "bwrap" else "unshare")
    fake.write_text(f"#!/bin/sh\necho '{fake.name}: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    result = run_sandboxed("pass\n", boundary=boundary, timeout_s=15)
    assert result.reason == f"{UNAVAILABLE} ({boundary}: {fake.name}: No permissions to create a new namespace)"
    assert not result.passed and result.boundary == boundary


def _humaneval_sample():
    from medlm.evaluation import HUMANEVAL_INSTRUCTION
    from medlm.tasks.humaneval import load_humaneval

    problem = load_humaneval()[0]
    return {"id": problem["task_id"], "prompt": HUMANEVAL_INSTRUCTION + problem["prompt"], "reference": problem}


def test_eval_counts_unrun_samples_apart_and_marks_unisolated_scores(monkeypatch, tmp_path, fresh_probe):
    from medlm.evaluation import Budget, check_code_sandbox, score_decoded, summarise

    sample = _humaneval_sample()
    solution = sample["reference"]["canonical_solution"]
    kwargs = dict(nfe={"mask": 1, "edit": 0}, edits={"replace": 0, "delete": 0, "insert": 0}, time_s=0.1,
                  grade_timeout_s=15)
    graded = score_decoded("humaneval", sample, Budget.of(1), solution, solution, **kwargs)
    assert graded["correct_after"] and graded["error"] is None
    assert summarise([graded])["graded_without_isolation"] is False
    assert check_code_sandbox("humaneval")["isolated"] is True
    assert check_code_sandbox("toy") is None

    monkeypatch.setenv("PATH", str(tmp_path))
    available_boundaries.cache_clear()
    with pytest.raises(ValueError, match="no OS sandbox boundary.*allow_unisolated_code"):
        check_code_sandbox("humaneval")
    assert check_code_sandbox("humaneval", allow_unisolated_code=True)["boundary"] == "none"
    unrun = score_decoded("humaneval", sample, Budget.of(1), solution, solution, **kwargs)
    assert unrun["grade_after"]["reason"].startswith(UNAVAILABLE)
    assert unrun["error"]["reason"] == "sandbox_unavailable" and not unrun["correct_after"]
    unisolated = score_decoded("humaneval", sample, Budget.of(1), solution, solution, allow_unisolated_code=True,
                               **kwargs)
    assert unisolated["correct_after"] and unisolated["grade_after"]["boundary"] == "none"
    summary = summarise([graded, unrun, unisolated])
    assert summary["n_sandbox_unavailable"] == 1
    assert summary["errors_by_reason"] == {"sandbox_unavailable": 1}
    assert summary["graded_without_isolation"] is True
    assert summary["sandbox_boundaries"]["none"] == 2 and sum(summary["sandbox_boundaries"].values()) == 4


def test_the_cli_flag_accepts_unisolated_code():
    from jobs.evaluate import parse_args

    assert parse_args(["--checkpoint", "c"]).allow_unisolated_code is False
    assert parse_args(["--checkpoint", "c", "--allow-unisolated-code"]).allow_unisolated_code is True
    assert parse_args(["--checkpoint", "c", "allow_unisolated_code=true"]).allow_unisolated_code is True


def test_available_boundaries_are_listed_strongest_first():
    status = available_boundaries()
    assert list(status) == list(BOUNDARIES)
    print("sandbox boundaries:", {k: v or "available" for k, v in status.items()})
    assert all(v is None or isinstance(v, str) and v for v in status.values())
    if not IS_ROOT:
        assert status["unshare"].startswith("needs root")


def test_medlm_eval_refuses_humaneval_without_a_boundary_before_any_work(monkeypatch, tmp_path, fresh_probe,
                                                                         capsys):
    from jobs.evaluate import cli
    from jobs.init_model import cli as init_cli

    checkpoint, out = tmp_path / "ckpt", tmp_path / "out"
    assert init_cli(["--preset", "tiny", "--out", str(checkpoint)]) == 0
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    argv = ["--checkpoint", str(checkpoint), "--task", "humaneval", "--n", "1", "--gen-len", "16",
            "--mask-steps", "4", "--out", str(out)]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "no OS sandbox boundary" in err and "--allow-unisolated-code" in err and "bwrap" in err
    assert not out.exists()  # refused before Ray started or anything was written


NON_ROOT_CHECK = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from sandbox import available_boundaries, run_sandboxed
base, pid = sys.argv[2], int(sys.argv[3])
out = {"boundaries": available_boundaries()}
for name, code in {
    "ids": "import os\\nprint(os.getuid(), os.getpid())",
    "write": f"open('{base}/planted', 'w').write('x')",
    "change": f"open('{base}/keep.txt', 'a').write('tampered')",
    "system": f"import os\\nos.system('rm -f {base}/keep.txt')",
    "kill": f"import os\\nos.kill({pid}, 9)",
}.items():
    r = run_sandboxed(code, in_process_guards=False, timeout_s=20)
    out[name] = [r.boundary, r.reason, r.stdout]
print(json.dumps(out))
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs root to start a grader as another user")
def test_bwrap_for_a_grader_that_is_not_root(tmp_path):
    """The same module run by an unprivileged grader takes bubblewrap's user-namespace branch."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if available_boundaries()["bwrap"] is not None or python is None or shutil.which("setpriv") is None:
        pytest.skip("needs bubblewrap, setpriv and a system python3 that uid 65534 can run")
    home = Path(tempfile.mkdtemp(prefix="medlm-nonroot-"))
    try:
        home.chmod(0o777)
        shutil.copyfile(sandbox_module.__file__, home / "sandbox.py")  # stdlib only: runs on any python3
        (home / "sandbox.py").chmod(0o644)
        (home / "keep.txt").write_text("canary")
        (home / "keep.txt").chmod(0o666)
        sleeper = subprocess.Popen(["sleep", "60"], user=SANDBOX_UID, group=SANDBOX_UID, extra_groups=[])
        try:
            done = subprocess.run(["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                                   python, "-I", "-B", "-c", NON_ROOT_CHECK, str(home), str(home), str(sleeper.pid)],
                                  capture_output=True, text=True, timeout=120, cwd=home,
                                  env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
            assert sleeper.poll() is None
        finally:
            sleeper.kill()
            sleeper.wait()
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout)
        print("non-root grader:", out["boundaries"])
        assert out["boundaries"]["bwrap"] is None and out["boundaries"]["unshare"].startswith("needs root")
        assert out["ids"][:2] == ["bwrap", "passed"] and out["ids"][2].split()[1] == "2"  # own PID namespace
        assert all(out[k][0] == "bwrap" and not out[k][1].startswith(UNAVAILABLE) for k in out if k != "boundaries")
        assert sorted(p.name for p in home.iterdir()) == ["keep.txt", "sandbox.py"]
        assert (home / "keep.txt").read_text() == "canary"
    finally:
        shutil.rmtree(home, ignore_errors=True)
