"""What the benchmark orchestrators (scripts/bench-trackers.py, scripts/soak.py) share:
their children's process groups, the one-shot signal handling, the exit codes, logging, the
build of the binaries under test, a few probes of the server and of the machine, and the
command line a report shows. Python 3.11+, standard library only. Their reports
(scripts/bench_report.py, scripts/soak_report.py) draw with scripts/bench_chart.py.

Every child runs in a process group of its own, and the pgids of those still running are
listed, one a line, in a children file: scripts/run-orchestrator.sh stops what that file
still lists when the orchestrator itself was SIGKILLed. The first SIGINT, SIGTERM or SIGHUP
raises Interrupted in the main thread; `run_main` then stops every child and exits 130.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, NoReturn

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REPO = Path(__file__).resolve().parent.parent
OURS_BIN = REPO / "target" / "release" / "p2p-mediastream"
LOADTEST_BIN = REPO / "target" / "release" / "loadtest"


class Interrupted(Exception):
    """Raised by the signal handler, with the signal's name, to unwind into the cleanup."""


def make_log(prefix: str) -> Callable[[str], None]:
    """A logger writing `[PREFIX HH:MM:SS] message` lines (UTC) to stderr."""

    def log(msg: str) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")
        print(f"[{prefix} {stamp}] {msg}", file=sys.stderr, flush=True)

    return log


# ---------------------------------------------------------------- process bookkeeping

class Children:
    """The process groups an orchestrator started and has not stopped yet, mirrored in
    `path` for scripts/run-orchestrator.sh.

    `kill_note` is what `stop` logs when a child ignores SIGTERM (fields: what, grace);
    with `sweep_exited`, `stop` also SIGKILLs the group of a child that already exited,
    in case the leader left something of its group behind."""

    def __init__(self, path: Path, log: Callable[[str], None], *,
                 kill_note: str = "{what} ignored SIGTERM for {grace:.0f} s: SIGKILL",
                 sweep_exited: bool = True) -> None:
        self.path = path
        self.log = log
        self.kill_note = kill_note
        self.sweep_exited = sweep_exited
        self.groups: dict[int, str] = {}  # pgid -> what

    def write(self) -> None:
        """Rewrites the children file from `groups`; best effort."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(f"{pgid}\n" for pgid in self.groups))
        except OSError:
            pass

    def spawn(self, argv: list[str], what: str, **kwargs) -> subprocess.Popen:
        """Starts a child in its own process group, remembered for cleanup."""
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.groups[proc.pid] = what
        self.write()
        return proc

    def forget(self, proc: subprocess.Popen) -> None:
        """Drops a child that has exited on its own from the bookkeeping."""
        self.groups.pop(proc.pid, None)
        self.write()

    def stop(self, proc: subprocess.Popen | None, grace: float = 15.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds. Returns the exit code."""
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.log(self.kill_note.format(what=self.groups.get(proc.pid, proc.pid), grace=grace))
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        elif self.sweep_exited:
            # The leader is gone; make sure nothing of its group is left.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.forget(proc)
        return proc.returncode

    def kill_all(self) -> None:
        """SIGTERM to every group still listed, SIGKILL to those alive 10 s later; then
        removes the children file."""
        for pgid, what in list(self.groups.items()):
            try:
                os.killpg(pgid, signal.SIGTERM)
                self.log(f"stopping {what} (pgid {pgid})")
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for pgid in list(self.groups):
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.groups.clear()
        try:
            self.path.unlink()
        except OSError:
            pass


def _on_signal(signum, _frame):
    # Once: further signals must not interrupt the cleanup that this one starts.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def handle_signals() -> None:
    """From now on SIGINT, SIGTERM and SIGHUP raise Interrupted (once)."""
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def run_main(main: Callable[[list[str]], int], fatal: type[Exception], children: Children) -> NoReturn:
    """Runs `main(sys.argv[1:])` and exits with its code; `fatal` (a failure with a message
    for people) exits 2, a signal or Ctrl-C 130. Every child still running is stopped on
    the way out, whatever happened."""
    try:
        sys.exit(main(sys.argv[1:]))
    except fatal as err:
        children.log(f"error: {err}")
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as err:
        children.log(f"interrupted ({err}); cleaning up")
        sys.exit(130)
    finally:
        children.kill_all()


# ---------------------------------------------------------------- probes

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM (bytes) and Threads from /proc/PID/status; what cannot be read is missing."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    out["Threads"] = int(line.split()[1])
    except OSError:
        pass
    return out


def ours_environment(port: int) -> dict[str, str]:
    """The environment our tracker runs with in a benchmark: on 127.0.0.1:`port`, logging
    warnings plus its own lifecycle lines, and without the per-connection limits a
    synthetic load would trip (see docs/benchmarks.md, Set-up)."""
    env = dict(os.environ)
    env.update({
        "TRACKER__SERVER__HOST": "127.0.0.1",
        "TRACKER__SERVER__PORT": str(port),
        # warn for everything, plus our own lifecycle lines (shards, listening).
        "RUST_LOG": "warn,p2p_mediastream=info",
        "TRACKER__WS__MAX_MESSAGES_PER_SEC": "100000",
        "TRACKER__WS__MESSAGE_BURST": "100000",
        "TRACKER__SERVER__MAX_CONNECTIONS_PER_IP": "0",
        "TRACKER__SERVER__MAX_CONNECTIONS": "19500",
    })
    return env


def stats_json(port: int) -> dict | None:
    """Our tracker's /stats.json on 127.0.0.1:`port`, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=3) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, error: type[Exception]) -> None:
    """Waits until 127.0.0.1:`port` accepts connections; raises `error` when `proc` exits
    first or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"the server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise error(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def ci_running(pattern: str) -> list[str]:
    """The logs matching `pattern` (a glob) whose last non-blank line does not start with
    EXIT: background CI runs still going."""
    running = []
    for path in sorted(glob.glob(pattern)):
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
        if not (lines and lines[-1].startswith("EXIT")):
            running.append(path)
    return running


def wait_quiet(limit: float, timeout: float, ci_log: str | None, log: Callable[[str], None]) -> dict:
    """Waits until the 1-min load average is below `limit` and, with `ci_log`, until every
    log it matches ends with EXIT. "ci" says so for the report, without naming the logs."""
    start = time.monotonic()
    while True:
        load1 = loadavg()
        running = ci_running(ci_log) if ci_log else []
        waited = time.monotonic() - start
        ci = (None if not ci_log else f"{len(running)} other CI run(s) still active" if running
              else "no other CI run was active")
        state = {"load1": load1, "waited_s": round(waited), "ci": ci}
        if load1 < limit and not running:
            log(f"machine quiet: load {load1:.2f}" + (f", {ci}" if ci else "") + f" (waited {waited:.0f} s)")
            return state | {"quiet": True}
        busy = f"load {load1:.2f} (< {limit} wanted)" + (f", still running: {', '.join(running)}" if running else "")
        if waited >= timeout:
            log(f"machine still busy after {timeout:.0f} s ({busy}); going on")
            return state | {"quiet": False}
        log(f"waiting for a quiet machine: {busy}")
        time.sleep(min(20.0, max(1.0, timeout - waited)))


def core_ticks() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    out = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0].startswith("cpu") and parts[0] != "cpu":
                out[parts[0][3:]] = [int(x) for x in parts[1:9]]
    return out


def core_split(before: dict, after: dict, core: str) -> dict | None:
    """Where one core's time went between two readings, in percent."""
    if core not in before or core not in after:
        return None
    d = [a - b for a, b in zip(after[core], before[core])]
    total = sum(d)
    if total <= 0:
        return None
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    split = {n: v / total * 100 for n, v in zip(names, d)}
    split["user"] += split.pop("nice")
    split["idle"] += split.pop("iowait")
    return split


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads) from /proc/PID/stat,
    or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        # The command name may hold spaces; the fields after it start past the last ')'.
        fields = text[text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- the binaries and the machine

def build_binaries(children: Children, skip_build: bool, error: type[Exception]) -> None:
    """cargo build --release of the server and the load tester (unless `skip_build`), in the
    foreground for at most an hour; raises `error` when they are not there after."""
    if not skip_build:
        children.log("building: cargo build --release --bin p2p-mediastream --bin loadtest")
        build = children.spawn(["cargo", "build", "--release", "--bin", "p2p-mediastream", "--bin", "loadtest"],
                               "cargo", cwd=REPO)
        try:
            build.wait(timeout=3600)
        except subprocess.TimeoutExpired:
            children.stop(build, grace=5)
            raise error("cargo build took more than an hour") from None
        children.forget(build)
        if build.returncode != 0:
            raise error("cargo build --release failed (see the output above)")
    for binary in (OURS_BIN, LOADTEST_BIN):
        if not os.access(binary, os.X_OK):
            raise error(f"{binary} is missing; run without --skip-build")


def capture(argv: list[str], timeout: float = 30) -> str:
    """A short command's output (stdout, else stderr), or why there is none."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"


def commit() -> tuple[str, str]:
    """The repository's commit (git describe), and "" or which files of the build differ
    from it ("uncommitted changes in src/x.rs, ...")."""
    described = capture(["git", "-C", str(REPO), "describe", "--always"])
    dirty = capture(["git", "-C", str(REPO), "diff", "--name-only", "HEAD", "--", "src", "Cargo.toml", "Cargo.lock"])
    return described, f"uncommitted changes in {', '.join(dirty.split())}" if dirty else ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def kernel() -> str:
    return platform.release()


def machine_facts() -> dict:
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1048576:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": kernel(),
        "memory": mem,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK),
        "rustc": capture(["rustc", "--version"]),
        "node": capture(["node", "--version"]),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- reports

def published_command(script: str, argv: list[str], local: tuple[str, ...]) -> str:
    """The command a report shows to reproduce a run: `script` with `argv`, less the options
    in `local` and their values (where output goes, what to wait for: paths of one machine).
    A prefix that argparse took for one of them counts as that option."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if len(name) > 2 and name.startswith("--") and any(o.startswith(name) for o in local):
            skip = "=" not in arg
            continue
        kept.append(arg)
    return script + ("" if not kept else " " + shlex.join(kept))
