#!/usr/bin/env python3
"""Side-by-side benchmark of WebTorrent trackers: ours (p2p-mediastream), aquatic_ws and
the reference bittorrent-tracker (npm). Orchestrated by scripts/bench-trackers.sh; the
Python standard library only (3.11+).

Every server runs pinned to core 1 (taskset -c 1), the load tester to core 0, on loopback.
Each (step, tracker, repeat) gets a freshly started server. Results go to
target/bench/results/*.json (the load tester's --json reports plus summary.json), and the
report to docs/benchmarks.md with SVG charts (target/bench/quick/ for --quick runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import html
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# bench_common.py sits next to this file: found from any working directory (even under
# python3 -P), and not compiled into a scripts/__pycache__/ that git would list.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (Children, free_port, handle_signals, make_log,  # noqa: E402
                          proc_status, run_main, stats_json, tail)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "target" / "bench"
RESULTS = BENCH / "results"
OURS_BIN = REPO / "target" / "release" / "p2p-mediastream"
LOADTEST_BIN = REPO / "target" / "release" / "loadtest"
REF_DIR = BENCH / "reference"
REF_VERSION = "11.2.3"
AQUATIC_ROOT = BENCH / "aquatic"
AQUATIC_VERSION = "0.9.0"
CHILDREN_FILE = BENCH / ".bench-trackers.children"

SERVER_CORE = "1"
CLIENT_CORE = "0"
P99_LIMIT_MS = 10.0
DELIVERY_LIMIT = 0.99

TRACKERS = ("ours", "aquatic", "reference")
LABEL = {"ours": "ours (p2p-mediastream)", "aquatic": "aquatic_ws", "reference": "bittorrent-tracker"}
SHORT = {"ours": "ours", "aquatic": "aquatic_ws", "reference": "bittorrent-tracker"}
COLOR = {"ours": "#1f77b4", "aquatic": "#2ca02c", "reference": "#ff7f0e"}


class BenchError(Exception):
    """A failure that stops the benchmark, with a message for people."""


class Unavailable(Exception):
    """A tracker that cannot be built or started here; reported in the doc."""


log = make_log("bench")


# ---------------------------------------------------------------- process bookkeeping

children = Children(CHILDREN_FILE, log)


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """A bounded foreground command (build, install, version probes)."""
    proc = children.spawn(argv, Path(argv[0]).name, **kwargs)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        children.stop(proc, grace=5)
        raise BenchError(f"`{shlex.join(argv)}` took more than {timeout:.0f} s") from None
    finally:
        if proc.poll() is not None:
            children.forget(proc)
    return subprocess.CompletedProcess(argv, proc.returncode)


def capture(argv: list[str], timeout: float = 30, cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"


# ---------------------------------------------------------------- small helpers

def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"the server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise Unavailable(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def ci_finished(pattern: str) -> tuple[bool, str]:
    """True when every background CI log matching `pattern` (a glob) ends with a line
    starting with EXIT (or none exists)."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        return True, f"no {pattern}"
    texts = []
    ok = True
    for path in paths:
        lines = [l for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
        last = lines[-1] if lines else ""
        if not last.startswith("EXIT"):
            ok = False
            texts.append(f"{path} still running (last line {last[:50]!r})")
    return ok, "; ".join(texts) if texts else f"{', '.join(paths)} all end with EXIT"


def wait_quiet(limit: float, timeout: float, ci_log: str) -> dict:
    """Waits until the 1-min load average is below `limit` and CI has finished."""
    start = time.monotonic()
    while True:
        load = loadavg()
        ci_ok, ci_text = ci_finished(ci_log)
        waited = time.monotonic() - start
        if load < limit and ci_ok:
            log(f"machine quiet: load {load:.2f}, {ci_text} (waited {waited:.0f} s)")
            return {"load1": load, "waited_s": round(waited), "ci": ci_text, "quiet": True}
        if waited >= timeout:
            log(f"machine still busy after {timeout:.0f} s (load {load:.2f}, {ci_text}); going on")
            return {"load1": load, "waited_s": round(waited), "ci": ci_text, "quiet": False}
        log(f"waiting for a quiet machine: load {load:.2f} (< {limit} wanted), {ci_text}")
        time.sleep(min(20.0, max(1.0, timeout - waited)))


# ---------------------------------------------------------------- steps

@dataclass
class Step:
    id: str
    kind: str  # "rate", "big" or "idle"
    connections: int
    swarms: int
    rate: float | None  # announces/s
    offers: int
    sdp_bytes: int
    duration: float
    warmup: float
    source_ips: int = 1
    connect_rate: float = 500
    interval: float | None = None

    def loadtest_args(self, port: int, pid: int, seed: int) -> list[str]:
        args = [
            str(LOADTEST_BIN),
            "--url", f"ws://127.0.0.1:{port}/announce",
            "-c", str(self.connections),
            "--connect-rate", f"{self.connect_rate:g}",
            "--source-ips", str(self.source_ips),
            "--swarms", str(self.swarms),
            "--hot-swarms", "0",
            "--offers", str(self.offers),
            "--sdp-bytes", str(self.sdp_bytes),
            "-d", f"{self.duration:g}",
            "--warmup", f"{self.warmup:g}",
            "--seed", str(seed),
            "--server-pid", str(pid),
            "--json", "-q",
        ]
        if self.rate is not None:
            args += ["--rate", f"{self.rate:g}"]
        if self.interval is not None:
            args += ["--interval", f"{self.interval:g}"]
        return args

    def describe(self) -> str:
        if self.kind == "idle":
            return (f"{self.connections} connections over {self.source_ips} source IPs, "
                    f"{self.swarms} swarms, one announce each (no offers), then idle")
        ips = f" over {self.source_ips} source IPs" if self.source_ips > 1 else ""
        return (f"{self.connections} connections{ips}, {self.swarms} swarms (no hot swarm, Zipf 1), "
                f"{self.rate:g} announces/s, {self.offers} offers x {self.sdp_bytes} B, every offer answered")


def make_steps(quick: bool, rates: list[float]) -> list[Step]:
    d, w = (12, 4) if quick else (25, 8)
    steps = [Step(f"c1k-r{r:g}", "rate", 1000, 100, r, 10, 400, d, w) for r in rates]
    # 10k connections open at 1000/s: the ramp (10 s) ends inside the warm-up.
    bd, bw = (22, 13) if quick else (35, 15)
    steps.append(Step("c10k-r2000", "big", 10000, 1000, 2000, 10, 400, bd, bw,
                      source_ips=4, connect_rate=1000))
    steps.append(Step("c10k-r3000", "big", 10000, 1000, 3000, 10, 400, bd, bw,
                      source_ips=4, connect_rate=1000))
    md, mw = (16, 12) if quick else (25, 18)
    steps.append(Step("idle10k", "idle", 10000, 100, None, 0, 400, md, mw,
                      source_ips=4, connect_rate=2000, interval=3600))
    return steps


# ---------------------------------------------------------------- trackers

@dataclass
class Tracker:
    name: str
    version: str = ""
    note: str = ""
    unavailable: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO

    def command(self, port: int, workdir: Path) -> list[str]:
        if self.name == "ours":
            return ["taskset", "-c", SERVER_CORE, str(OURS_BIN)]
        if self.name == "reference":
            return ["taskset", "-c", SERVER_CORE, "node", str(REF_DIR / "server.mjs"), str(port)]
        cfg = workdir / f"aquatic-{port}.toml"
        cfg.write_text(aquatic_config(self.argv[0], port))
        return ["taskset", "-c", SERVER_CORE, self.argv[0], "-c", str(cfg)]

    def environment(self, port: int) -> dict[str, str]:
        env = dict(os.environ)
        if self.name == "ours":
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


def prepare_ours(skip_build: bool) -> Tracker:
    if not skip_build:
        log("building ours: cargo build --release --bin p2p-mediastream --bin loadtest")
        res = run(["cargo", "build", "--release", "--bin", "p2p-mediastream", "--bin", "loadtest"],
                  timeout=3600, cwd=REPO)
        if res.returncode != 0:
            raise BenchError("cargo build --release failed (see the output above)")
    for binary in (OURS_BIN, LOADTEST_BIN):
        if not os.access(binary, os.X_OK):
            raise BenchError(f"{binary} is missing; run without --skip-build")
    commit = capture(["git", "-C", str(REPO), "describe", "--always"])
    version = capture([str(OURS_BIN), "--version"])
    dirty = capture(["git", "-C", str(REPO), "diff", "--name-only", "HEAD", "--", "src", "Cargo.toml", "Cargo.lock"])
    note = f"built with uncommitted changes in {', '.join(dirty.split())}" if dirty else ""
    return Tracker("ours", version=f"{version} (commit {commit})", note=note)


def prepare_reference() -> Tracker:
    t = Tracker("reference")
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise Unavailable("node/npm are not installed")
    pkg = REF_DIR / "node_modules" / "bittorrent-tracker" / "package.json"
    installed = ""
    if pkg.exists():
        installed = json.loads(pkg.read_text()).get("version", "")
    if installed != REF_VERSION:
        REF_DIR.mkdir(parents=True, exist_ok=True)
        if not (REF_DIR / "package.json").exists():
            (REF_DIR / "package.json").write_text('{"name":"bench-reference","private":true,"type":"module"}\n')
        log(f"installing bittorrent-tracker@{REF_VERSION} in {REF_DIR}")
        res = run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund",
                   f"bittorrent-tracker@{REF_VERSION}"], timeout=600, cwd=REF_DIR)
        if res.returncode != 0 or not pkg.exists():
            raise Unavailable(f"npm install bittorrent-tracker@{REF_VERSION} failed")
        installed = json.loads(pkg.read_text()).get("version", "")
    shutil.copyfile(REPO / "scripts" / "bench-trackers.reference.mjs", REF_DIR / "server.mjs")
    t.version = f"bittorrent-tracker {installed}, node {capture(['node', '--version'])}"
    return t


def install_aquatic(target: Path) -> str:
    """cargo install aquatic_ws --locked; if the locked build fails (metrics 0.22.3 does not
    compile on rustc >= 1.89), rebuild the published crate with only metrics moved to
    0.22.4, which carries the fix. Returns how it was built."""
    AQUATIC_ROOT.mkdir(parents=True, exist_ok=True)
    build_dir = AQUATIC_ROOT / "build"
    log_path = AQUATIC_ROOT / "install.log"
    log(f"installing aquatic_ws {AQUATIC_VERSION} into {AQUATIC_ROOT} (log: {log_path}); "
        "this takes several minutes")
    with open(log_path, "w") as out:
        res = run(["cargo", "install", f"aquatic_ws@{AQUATIC_VERSION}", "--locked",
                   "--root", str(AQUATIC_ROOT), "--target-dir", str(build_dir)],
                  timeout=3600, stdout=out, stderr=subprocess.STDOUT)
    if res.returncode == 0 and target.exists():
        return f"cargo install aquatic_ws@{AQUATIC_VERSION} --locked"
    log("the locked build failed; retrying with metrics 0.22.3 -> 0.22.4 in its Cargo.lock")
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    crates = sorted(glob.glob(str(cargo_home / "registry" / "cache" / "*" / f"aquatic_ws-{AQUATIC_VERSION}.crate")))
    if not crates:
        raise Unavailable(f"cargo install aquatic_ws --locked failed and the crate file is not in "
                          f"{cargo_home}/registry/cache; see {log_path}")
    src_root = AQUATIC_ROOT / "src"
    shutil.rmtree(src_root, ignore_errors=True)
    src_root.mkdir(parents=True)
    with tarfile.open(crates[-1]) as tar:
        tar.extractall(src_root, filter="data")
    src = src_root / f"aquatic_ws-{AQUATIC_VERSION}"
    with open(log_path, "a") as out:
        steps = [
            ["cargo", "update", "-p", "metrics@0.22.3", "--precise", "0.22.4"],
            ["cargo", "install", "--path", ".", "--locked", "--root", str(AQUATIC_ROOT),
             "--target-dir", str(build_dir)],
        ]
        for argv in steps:
            out.write(f"\n$ {shlex.join(argv)}\n")
            out.flush()
            res = run(argv, timeout=3600, cwd=src, stdout=out, stderr=subprocess.STDOUT)
            if res.returncode != 0:
                raise Unavailable(f"`{shlex.join(argv)}` failed; see {log_path}:\n{tail(log_path, 8)}")
    return (f"aquatic_ws {AQUATIC_VERSION} from crates.io, its Cargo.lock with metrics 0.22.3 -> 0.22.4 "
            "(0.22.3 no longer compiles on current rustc, error E0521), then cargo install --locked")


def aquatic_config(binary: str, port: int) -> str:
    text = subprocess.run([binary, "-p"], capture_output=True, text=True, timeout=30, check=True).stdout
    settings = {
        ("", "socket_workers"): "1",
        ("", "swarm_workers"): "1",
        ("", "log_level"): '"warn"',
        ("network", "address"): f'"127.0.0.1:{port}"',
        ("network", "enable_tls"): "false",
    }
    optional = {("cpu_pinning", "active"): "false", ("privileges", "drop_privileges"): "false",
                ("metrics", "run_prometheus_endpoint"): "false"}
    return toml_set(text, settings, optional)


def toml_set(text: str, required: dict, optional: dict) -> str:
    """Sets `key = value` lines in a flat TOML file, section by section."""
    section = ""
    done = set()
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        m = re.match(r"^\[([^\]]+)\]$", stripped)
        if m:
            section = m.group(1)
        else:
            km = re.match(r"^([A-Za-z0-9_]+)\s*=", stripped)
            if km:
                key = (section, km.group(1))
                if key in required or key in optional:
                    line = f"{km.group(1)} = {required.get(key, optional.get(key))}"
                    done.add(key)
        out.append(line)
    missing = [f"{s or '(top)'}.{k}" for (s, k) in required if (s, k) not in done]
    if missing:
        raise Unavailable(f"aquatic_ws -p has no key {', '.join(missing)}; its config format changed")
    return "\n".join(out) + "\n"


def prepare_aquatic(workdir: Path) -> Tracker:
    t = Tracker("aquatic")
    override = os.environ.get("AQUATIC_WS")
    default = AQUATIC_ROOT / "bin" / "aquatic_ws"
    if override:
        binary = Path(override)
        if not os.access(binary, os.X_OK):
            raise BenchError(f"AQUATIC_WS={override} is not an executable file")
        how = f"AQUATIC_WS={override}"
    elif os.access(default, os.X_OK):
        binary = default
        how = f"{default.relative_to(REPO)}, installed earlier by this script"
    else:
        how = install_aquatic(default)
        binary = default
    t.argv = [str(binary)]
    t.version = "aquatic_ws " + (capture([str(binary), "-v"]) or "?")
    t.note = how
    # Does it run here? glommio needs io_uring and locked memory.
    port = free_port()
    cmd = t.command(port, workdir)
    logf = workdir / "aquatic-probe.log"
    with open(logf, "w") as out:
        proc = children.spawn(cmd, "aquatic_ws probe", stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        wait_listening(port, proc, timeout=20)
        time.sleep(1.0)
        if proc.poll() is not None:
            raise Unavailable(f"it exited with code {proc.returncode} just after listening")
    except Unavailable as err:
        children.stop(proc, grace=3)
        raise Unavailable(f"aquatic_ws does not run in this sandbox: {err}. Its log:\n{tail(logf, 15)}") from None
    children.stop(proc, grace=5)
    return t


def raise_memlock() -> str:
    """glommio (aquatic_ws) locks memory for its io_uring rings. Raises RLIMIT_MEMLOCK for
    this process and so for every server it starts; says what the limit is."""
    def kib(v: int) -> str:
        return "unlimited" if v == resource.RLIM_INFINITY else f"{v // 1024} KiB"
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return "RLIMIT_MEMLOCK raised to unlimited"
    except (ValueError, OSError):
        pass
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    except (ValueError, OSError):
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return (f"RLIMIT_MEMLOCK stays at {kib(soft)}: it cannot be raised here (no CAP_SYS_RESOURCE in "
            "this sandbox); aquatic_ws runs with it")


# ---------------------------------------------------------------- one run

@dataclass
class RunResult:
    tracker: str
    step: str
    repeat: int
    ok: bool
    error: str = ""
    report: dict | None = None
    server_log_issues: list[str] = field(default_factory=list)
    rss_baseline: int | None = None
    rss_loaded: int | None = None
    rss_samples: list = field(default_factory=list)
    core_split: dict | None = None  # "server"/"client" -> {user, system, softirq, idle...} in %
    peers_seen: int | None = None
    shards_line: str = ""
    load1_before: float | None = None
    server_stats: dict | None = None


LOG_ISSUE = re.compile(r"\b(ERROR|WARN|panicked|FATAL)\b|Error:|thread '.*' panicked", re.I)
EXPECTED = re.compile(r"SIGTERM|SIGINT|stopping \(0 warnings\)|graceful shutdown")


def server_log_issues(path: Path) -> list[str]:
    out = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            if LOG_ISSUE.search(line) and not EXPECTED.search(line):
                out.append(line[:300])
    except OSError:
        pass
    return out


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


def stats_peers(port: int) -> int | None:
    try:
        return int((stats_json(port) or {}).get("peersCount"))
    except (ValueError, TypeError):
        return None


def run_one(tracker: Tracker, step: Step, repeat: int, workdir: Path) -> RunResult:
    res = RunResult(tracker.name, step.id, repeat, ok=False, load1_before=loadavg())
    tag = f"{step.id}-{tracker.name}-r{repeat}"
    port = free_port()
    srv_log = RESULTS / f"{tag}.server.log"
    cmd = tracker.command(port, workdir)
    with open(srv_log, "w") as out:
        server = children.spawn(cmd, f"{tracker.name} server", stdout=out, stderr=subprocess.STDOUT,
                                env=tracker.environment(port), cwd=tracker.cwd)
    loadtest = None
    try:
        try:
            wait_listening(port, server, timeout=30)
        except Unavailable as err:
            res.error = f"server did not start: {err}; log: {tail(srv_log, 5)}"
            return res
        time.sleep(1.0)  # let it settle before the baseline
        res.rss_baseline = proc_status(server.pid).get("VmRSS")
        if tracker.name == "ours":
            text = srv_log.read_text(errors="replace")
            m = re.search(r"(\d+) swarm shard\(s\)", text)
            res.shards_line = m.group(0) if m else "(no shard line in the log)"
        args = step.loadtest_args(port, server.pid, seed=repeat)
        argv = ["taskset", "-c", CLIENT_CORE] + args
        json_path = RESULTS / f"{tag}.json"
        err_path = RESULTS / f"{tag}.loadtest.log"
        with open(json_path, "w") as jout, open(err_path, "w") as eout:
            eout.write(f"$ {shlex.join(argv)}\n")
            eout.flush()
            t0 = time.monotonic()
            loadtest = children.spawn(argv, "loadtest", stdout=jout, stderr=eout, cwd=REPO)
            budget = step.duration + 3 + 120
            plateau = (step.warmup, step.duration - 0.5)
            ticks_start = ticks_end = None
            while loadtest.poll() is None:
                now = time.monotonic() - t0
                if now > budget:
                    res.error = f"loadtest still running after {budget:.0f} s; killed"
                    children.stop(loadtest, grace=5)
                    return res
                rss = proc_status(server.pid).get("VmRSS")
                res.rss_samples.append((round(now, 1), rss))
                # Where the cores' time goes inside the window: softirq (kernel network
                # processing of loopback traffic) is in neither process's CPU figure.
                if ticks_start is None and now >= step.warmup:
                    ticks_start = core_ticks()
                if ticks_end is None and now >= step.duration:
                    ticks_end = core_ticks()
                if (step.kind == "idle" and tracker.name == "ours" and res.peers_seen is None
                        and now >= (plateau[0] + plateau[1]) / 2):
                    res.peers_seen = stats_peers(port)
                time.sleep(0.5)
            code = loadtest.returncode
            children.forget(loadtest)
        if tracker.name == "ours":
            # Our own counters over the whole run: deliveries dropped when a session's
            # mailbox was full, failures sent.
            st = stats_json(port) or {}
            res.server_stats = {"deliveries_dropped": st.get("deliveriesDropped"),
                                "offers_relayed": st.get("offersRelayed"),
                                "answers_relayed": st.get("answersRelayed"),
                                "failures_sent": (st.get("messagesOut") or {}).get("failure")}
        if code not in (0, 1):
            res.error = f"loadtest exited with {code}: {tail(err_path, 5)}"
            return res
        try:
            res.report = json.loads(json_path.read_text())
        except ValueError as err:
            res.error = f"unreadable loadtest JSON ({err})"
            return res
        if ticks_start and ticks_end:
            res.core_split = {"server": core_split(ticks_start, ticks_end, SERVER_CORE),
                              "client": core_split(ticks_start, ticks_end, CLIENT_CORE)}
        in_plateau = [r for (t, r) in res.rss_samples if plateau[0] <= t <= plateau[1] and r]
        if in_plateau:
            res.rss_loaded = int(statistics.median(in_plateau))
        if server.poll() is not None:
            res.error = f"the server died during the run (exit {server.returncode})"
            return res
        res.ok = True
        return res
    finally:
        children.stop(loadtest, grace=5)
        children.stop(server, grace=15)
        res.server_log_issues = server_log_issues(srv_log)


# ---------------------------------------------------------------- figures

def metrics_of(report: dict) -> dict:
    t = report["traffic"]
    lat = report["latency_ms"]
    thr = report["throughput"]
    srv = report.get("server") or {}
    sig = lat.get("signalling_rtt") or {}
    ann = lat.get("announce_rtt") or {}
    mps = thr["msgs_per_sec"]
    cpu = srv.get("cpu_percent")
    window = report.get("window_secs") or 0
    unmatched = t.get("announce_responses_unmatched", 0)
    # aquatic_ws answers every answer with an announce response; those frames are not
    # signalling work the other trackers do, so they are also counted apart.
    sig_mps = mps - (unmatched / window if window else 0)
    return {
        "msgs_per_sec": mps,
        "signal_msgs_per_sec": sig_mps,
        "unmatched_per_sec": unmatched / window if window else 0,
        "us_per_signal_msg": (cpu / 100 * 1e6 / sig_mps) if (cpu is not None and sig_mps > 0) else None,
        "announces_per_sec": t["announces_sent"] / window if window else None,
        "p50": sig.get("p50"),
        "p99": sig.get("p99"),
        "p999": sig.get("p99_9"),
        "announce_p99": ann.get("p99"),
        "offer_delivery": t.get("offer_delivery_ratio"),
        "answer_delivery": t.get("answer_delivery_ratio"),
        "errors": report["errors"]["errors"],
        "error_rate": report["errors"].get("error_rate"),
        "failures": report["errors"].get("failure_reasons") or {},
        "anomalies": t["offers_to_self"] + t["offers_wrong_swarm"] + t["answers_misrouted"],
        "queue_drops": t["queue_drops"],
        "cpu_percent": cpu,
        "us_per_msg": (cpu / 100 * 1e6 / mps) if (cpu is not None and mps) else None,
        "rss_mb": srv.get("rss_mb_end"),
        "server_wait": srv.get("runqueue_wait_percent"),
        "threads": srv.get("threads"),
        "client_cpu": report["client"]["cpu_percent"],
        "host_busy": report["host"]["busy_percent"],
        "established": report["connections"]["established"],
        "failed_by_cause": report["connections"].get("failed_by_cause") or {},
        "conn_failed": report["connections"]["failed"],
        "closed_by_server": report["connections"]["closed_by_server"],
        "lost": report["connections"]["lost"],
        "notes": report.get("notes") or [],
    }


def saturated(m: dict) -> bool:
    if m["p99"] is None or m["p99"] > P99_LIMIT_MS:
        return True
    for key in ("offer_delivery", "answer_delivery"):
        if m[key] is not None and m[key] < DELIVERY_LIMIT:
            return True
    return False


def aggregate(runs: list[RunResult]) -> dict | None:
    good = [r for r in runs if r.ok and r.report]
    if not good:
        return None
    ms = [metrics_of(r.report) for r in good]
    agg: dict = {"runs": len(good), "failed_runs": len(runs) - len(good)}
    for key in ms[0]:
        vals = [m[key] for m in ms]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            agg[key] = statistics.fmean(vals)
            agg[key + "_min"] = min(vals)
            agg[key + "_max"] = max(vals)
        elif key == "notes":
            agg[key] = sorted({n for m in ms for n in m[key]})
        elif key in ("failures", "failed_by_cause"):
            merged: dict = {}
            for m in ms:
                for k, v in (m[key] or {}).items():
                    merged[k] = merged.get(k, 0) + v
            agg[key] = merged
        else:
            agg[key] = next((v for v in vals if v is not None), None)
    agg["saturated_runs"] = sum(1 for m in ms if saturated(m))
    agg["sustained"] = agg["saturated_runs"] == 0
    agg["log_issues"] = sum(len(r.server_log_issues) for r in runs)
    agg["log_issue_samples"] = sorted({l for r in runs for l in r.server_log_issues})[:5]
    agg["errors_text"] = [r.error for r in runs if r.error]
    base = [r.rss_baseline for r in good if r.rss_baseline]
    loaded = [r.rss_loaded for r in good if r.rss_loaded]
    if base and loaded:
        agg["rss_baseline"] = statistics.fmean(base)
        agg["rss_loaded"] = statistics.fmean(loaded)
        per = [(r.rss_loaded - r.rss_baseline) for r in good if r.rss_loaded and r.rss_baseline]
        agg["rss_delta"] = statistics.fmean(per)
    dropped = [r.server_stats.get("deliveries_dropped") for r in good
               if r.server_stats and r.server_stats.get("deliveries_dropped") is not None]
    agg["server_dropped"] = statistics.fmean(dropped) if dropped else None
    failures_sent = [r.server_stats.get("failures_sent") for r in good
                     if r.server_stats and r.server_stats.get("failures_sent") is not None]
    agg["server_failures_sent"] = statistics.fmean(failures_sent) if failures_sent else None
    for side in ("server", "client"):
        splits = [r.core_split[side] for r in good if r.core_split and r.core_split.get(side)]
        if splits:
            agg[f"core_{side}"] = {k: statistics.fmean(sp[k] for sp in splits) for k in splits[0]}
    agg["peers_seen"] = next((r.peers_seen for r in good if r.peers_seen is not None), None)
    agg["shards_line"] = next((r.shards_line for r in runs if r.shards_line), "")
    return agg


def merge_summaries(old: dict, new: dict) -> dict:
    """The earlier run's summary plus the runs of an --add run."""
    redone = {(r["step"], r["tracker"]) for r in new["runs"]}
    out = dict(old)
    out["runs"] = [r for r in old["runs"] if (r["step"], r["tracker"]) not in redone] + new["runs"]
    ids = [s["id"] for s in old["steps"]]
    steps = list(old["steps"])
    for s in new["steps"]:
        if s["id"] not in ids:
            steps.append(s)
    # Rate steps in rate order, then the others as they came.
    out["steps"] = (sorted((s for s in steps if s["kind"] == "rate"), key=lambda s: s["rate"])
                    + [s for s in steps if s["kind"] != "rate"])
    out["trackers"] = [t for t in TRACKERS if t in old["trackers"] or t in new["trackers"]]
    out["tracker_info"] = {**new.get("tracker_info", {}), **old.get("tracker_info", {})}
    out["added"] = old.get("added", []) + [{"command": new["command"], "finished": new["finished"],
                                            "quiet": new["quiet"], "repeats": new["repeats"],
                                            "pairs": sorted(f"{s} {t}" for s, t in redone),
                                            "versions": {t: new["tracker_info"][t]["version"]
                                                         for t in new.get("tracker_info", {})}}]
    return out


def build_aggregates(summary: dict) -> dict:
    """step -> tracker -> aggregate (or None), from the runs listed in summary.json and
    their loadtest reports in RESULTS."""
    runs = []
    for d in summary["runs"]:
        r = RunResult(**d)
        if r.ok:
            path = RESULTS / f"{r.step}-{r.tracker}-r{r.repeat}.json"
            try:
                r.report = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                r.ok, r.error = False, f"cannot read {path}: {err}"
        runs.append(r)
    out: dict = {}
    for step in summary["steps"]:
        out[step["id"]] = {t: aggregate([r for r in runs if r.step == step["id"] and r.tracker == t])
                           for t in summary["trackers"]}
    return out


# ---------------------------------------------------------------- SVG

def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt_num(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def svg_chart(title: str, xlabel: str, ylabel: str, series: dict, log_y: bool = False,
              hline: tuple[float, str] | None = None) -> str:
    """series: name -> list of (x, y, saturated). Saturated points are drawn hollow."""
    W, H = 760, 440
    L, R, T, B = 80, 200, 48, 58
    pw, ph = W - L - R, H - T - B
    xs = [p[0] for pts in series.values() for p in pts]
    ys = [p[1] for pts in series.values() for p in pts if p[1] is not None and p[1] > 0]
    if not xs or not ys:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80"><text x="10" y="40">{html.escape(title)}: no data</text></svg>\n'
    x0, x1 = 0.0, max(xs) * 1.05
    if log_y:
        y0 = 10 ** math.floor(math.log10(min(ys + ([hline[0]] if hline else []))))
        y1 = 10 ** math.ceil(math.log10(max(ys + ([hline[0]] if hline else []))))
        if y1 <= y0:
            y1 = y0 * 10
        yticks = [10 ** e for e in range(int(round(math.log10(y0))), int(round(math.log10(y1))) + 1)]

        def fy(v: float) -> float:
            v = max(v, y0)
            return T + ph - (math.log10(v) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) * ph
    else:
        y0, y1 = 0.0, max(ys) * 1.1
        yticks = nice_ticks(y0, y1)
        y1 = max(y1, yticks[-1])

        def fy(v: float) -> float:
            return T + ph - (v - y0) / (y1 - y0) * ph

    def fx(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * pw

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L + pw / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    for v in yticks:
        y = fy(v)
        out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        label = f"{v:g}" if log_y else fmt_num(v)
        out.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for v in nice_ticks(x0, x1, 6):
        x = fx(v)
        out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{T + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{T + ph + 18}" text-anchor="middle">{fmt_num(v)}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 14}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text transform="translate(18 {T + ph / 2}) rotate(-90)" text-anchor="middle">{html.escape(ylabel)}</text>')
    if hline:
        y = fy(hline[0])
        out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#c00" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{L + pw - 4}" y="{y - 5:.1f}" text-anchor="end" fill="#c00">{html.escape(hline[1])}</text>')
    legend_y = T + 10
    parts: list[list[str]] = []  # drawn in reverse, so that the first series (ours) is on top
    for name, pts in series.items():
        part: list[str] = []
        parts.append(part)
        base, _, variant = name.partition(":")
        color = COLOR.get(base, "#333")
        dash = ' stroke-dasharray="6 4"' if variant else ""
        label = SHORT.get(base, base) + (" (signalling only)" if variant else "")
        pts = sorted((p for p in pts if p[1] is not None), key=lambda p: p[0])
        if len(pts) > 1:
            path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y, _ in pts)
            part.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, y, sat in pts:
            fill = "white" if sat else color
            part.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="4.5" fill="{fill}" stroke="{color}" stroke-width="2">'
                       f'<title>{html.escape(label)}: {x:g} -> {y:.4g}</title></circle>')
        out.append(f'<line x1="{L + pw + 14}" y1="{legend_y}" x2="{L + pw + 38}" y2="{legend_y}" stroke="{color}" stroke-width="3"{dash}/>')
        words = label.split(" (")
        out.append(f'<text x="{L + pw + 44}" y="{legend_y + 4}">{html.escape(words[0])}</text>')
        if len(words) > 1:
            legend_y += 14
            out.append(f'<text x="{L + pw + 44}" y="{legend_y + 4}" font-size="10">({html.escape(words[1])}</text>')
        legend_y += 20
    for part in reversed(parts):
        out.extend(part)
    out.append(f'<circle cx="{L + pw + 26}" cy="{legend_y + 6}" r="4.5" fill="white" stroke="#555" stroke-width="2"/>')
    out.append(f'<text x="{L + pw + 44}" y="{legend_y + 10}">saturated</text>')
    out.append(f'<text x="{L + pw + 14}" y="{legend_y + 26}" font-size="10">(p99 &gt; {P99_LIMIT_MS:g} ms or</text>')
    out.append(f'<text x="{L + pw + 14}" y="{legend_y + 39}" font-size="10">delivery &lt; {DELIVERY_LIMIT})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- report

def f(v, digits: int = 2, suffix: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}{suffix}"
    return f"{v:.{digits}f}{suffix}"


RATIO_KEYS = {"msgs_per_sec", "signal_msgs_per_sec", "p50", "p99", "p999", "announce_p99",
              "cpu_percent", "us_per_msg", "us_per_signal_msg", "rss_mb"}


def ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def machine_facts() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1048576:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory": mem,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK),
        "rustc": capture(["rustc", "--version"]),
        "node": capture(["node", "--version"]),
        "python": platform.python_version(),
    }


def render(summary: dict, doc_dir: Path) -> Path:
    steps = summary["steps"]
    trackers = summary["trackers"]
    agg = summary["aggregates"]  # step -> tracker -> agg|None
    avail = [t for t in trackers if not summary["unavailable"].get(t)]
    rate_steps = [s for s in steps if s["kind"] == "rate"]
    doc = doc_dir / "benchmarks.md"
    prefix = "benchmarks"
    lines: list[str] = []
    w = lines.append
    quick = summary["quick"]

    w("# Tracker benchmark: ours vs aquatic_ws vs bittorrent-tracker")
    w("")
    if quick:
        w("**Quick run (`--quick`): short steps, one repeat, few rates. For trying the script "
          "out only; the figures in docs/benchmarks.md come from the full run.**")
        w("")
    w(f"Generated by `scripts/bench-trackers.sh` on {summary['finished']} (UTC), "
      f"{summary['elapsed_min']:.0f} min. Reproduce with:")
    w("")
    w("```sh")
    w(summary["command"])
    for extra in summary.get("added", []):
        w(extra["command"])
    w("```")
    w("")
    ordinals = ["second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
    for index, extra in enumerate(summary.get("added", [])):
        steps_added = sorted({p.split()[0] for p in extra["pairs"]})
        trackers_added = {p.split()[1] for p in extra["pairs"]}
        trk = sorted(SHORT[t] for t in trackers_added)
        # Steps the other trackers ran too were re-measured (after a change of ours); the
        # others were added above the rates the others could sustain.
        shared_steps = {r["step"] for r in summary.get("runs", [])
                        if r["tracker"] not in trackers_added}
        nth = ordinals[index] if index < len(ordinals) else f"#{index + 2}"
        what = (f"re-measured step(s) {', '.join(f'`{x}`' for x in steps_added)} for "
                f"{', '.join(trk)} only (the other trackers' figures are from the first command)"
                if set(steps_added) <= shared_steps else
                f"added step(s) {', '.join(f'`{x}`' for x in steps_added)} for "
                f"{', '.join(trk)} only: the other trackers were already saturated well below "
                f"those rates")
        w(f"The {nth} command (finished {extra['finished']} UTC, {extra['repeats']} repeats, machine "
          f"state: {extra['quiet']}) {what}.")
        for t, v in extra.get("versions", {}).items():
            if v != summary["tracker_info"].get(t, {}).get("version"):
                w(f"Version of {SHORT[t]} in that run: {v}.")
        w("")
    w("## Set-up")
    w("")
    m = summary["machine"]
    w(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}; "
      f"fd limit {m['nofile'][0]}; a shared VM (other work may run: see *host busy* per step).")
    w(f"- Each server runs alone on core {SERVER_CORE} (`taskset -c {SERVER_CORE}`), the load tester "
      f"(`loadtest`, one thread) on core {CLIENT_CORE}. Everything goes over loopback.")
    w("- Every run starts a fresh server. Each step is repeated "
      f"{summary['repeats']}×; tables show the mean of the repeats (p99: mean, then min–max).")
    for t in trackers:
        info = summary["tracker_info"].get(t, {})
        line = f"- **{SHORT[t]}**: {info.get('version') or 'not measured'}"
        if info.get("note"):
            line += f"; {info['note']}"
        w(line + ".")
    w("- ours runs with `TRACKER__WS__MAX_MESSAGES_PER_SEC=100000 TRACKER__WS__MESSAGE_BURST=100000 "
      "TRACKER__SERVER__MAX_CONNECTIONS_PER_IP=0 TRACKER__SERVER__MAX_CONNECTIONS=19500 "
      "RUST_LOG=warn,p2p_mediastream=info`. The per-connection rate limit (20 msg/s by default) is "
      "far above what a real client sends (one announce every 120 s plus a few answers), but below "
      "this synthetic load: at 4000 announces/s over 1000 connections each socket sends 4 "
      "announces and up to 36 answers per second. The limit is lifted so that the tracker's "
      "work is measured, not its refusals.")
    if "ours" in avail:
        shard = next((agg[s["id"]]["ours"].get("shards_line") for s in steps
                      if agg.get(s["id"], {}).get("ours")), "")
        w(f"- Under `taskset -c {SERVER_CORE}`, ours sizes itself to the one core it may use: its log "
          f"says \"{shard}\" and it starts 1 HTTP worker.")
    w("- aquatic_ws: plain WebSocket (no TLS), `socket_workers = 1`, `swarm_workers = 1`, "
      "address 127.0.0.1:PORT, `log_level = \"warn\"`; the rest is `aquatic_ws -p`'s defaults "
      "(`max_offers = 10`, no CPU pinning of its own: the whole process is pinned by taskset). "
      f"It uses glommio (io_uring); {summary.get('memlock', 'RLIMIT_MEMLOCK unchanged')}.")
    w("- Two traits of aquatic_ws 0.9.0 shape its figures. (1) It answers every *answer* with an "
      "announce response of its own, so the client receives more frames (see *extra announce "
      "responses* below): compare *signalling msgs/s* and *CPU µs / signalling msg*. (2) It "
      "never sets TCP_NODELAY on its sockets (no `set_nodelay` anywhere in aquatic_ws 0.9.0 "
      "or its use of glommio), so Nagle's algorithm holds small frames back until the peer "
      "ACKs the previous ones; that adds up to tens of milliseconds to relays at light load. "
      "Ours and bittorrent-tracker (via `ws`) set TCP_NODELAY, and the tester sets it on its "
      "side. Real browsers would see the same delay from aquatic_ws.")
    w("- bittorrent-tracker: `new Server({udp:false, http:false, ws:true, stats:false})."
      "listen(port, '127.0.0.1')` (scripts/bench-trackers.reference.mjs), Node's defaults.")
    w(f"- Machine state before the run: {summary['quiet']}.")
    w("- wt-tracker was not measured: it is not published on the npm registry "
      "(`npm view wt-tracker` answers 404), and its WebSocket engine uWebSockets.js is "
      "distributed from GitHub only (`npm view uWebSockets.js`: 404, the name is not even "
      "valid on the registry; `uwebsockets.js` there is an unrelated fork). This sandbox reaches "
      "package registries only.")
    for t, why in summary["unavailable"].items():
        if why:
            w(f"- **{SHORT[t]} was not measured**: {why}")
    w("")
    w("### What a step is")
    w("")
    for s in steps:
        w(f"- `{s['id']}`: {s['describe']}; {s['duration']:g} s per run of which the first "
          f"{s['warmup']:g} s warm-up are excluded.")
    w("")
    w(f"A step is **saturated** when the offer→answer p99 is above {P99_LIMIT_MS:g} ms or the "
      f"offer or answer delivery ratio is below {DELIVERY_LIMIT}; a tracker *sustains* a rate "
      "when none of the repeats is saturated. *msgs/s* counts frames in and out at the client "
      "(announces, responses, offers, answers). *Offer→answer* is the whole signalling path "
      "A→tracker→B→tracker→A. *CPU µs/msg* = server CPU time per client-side message "
      "(server CPU % / 100 × 10⁶ / msgs/s). *host busy* is the share of both CPUs in use "
      "during the window, whoever used them (the tester's core included), so about 50 % means "
      "one core fully busy; it is read from /proc/stat, which in this VM sometimes reads below the "
      "server's and the tester's own CPU use, so treat it as indicative. *Run-queue wait* sums "
      "over a process's threads: ours (an HTTP worker and a swarm shard) and aquatic_ws (a socket "
      "and a swarm worker) run two busy threads on the one core, so one waits while the other "
      "runs; it does not mean that something else took the core. Where present, the *core 1 / core 0* "
      "rows split each core's time in the window (from /proc/stat): *softirq* is the kernel's "
      "processing of the loopback traffic, which is in neither process's CPU figure but takes "
      "the same core. *ours / X* columns divide our figure by the other tracker's: below 1 "
      "means ours is lower, which is better for latencies, CPU and RSS and worse for msgs/s.")
    w("")

    # headline
    w("## Headline")
    w("")
    hdr = "| | " + " | ".join(SHORT[t] for t in trackers) + " |"
    w(hdr)
    w("|---|" + "---|" * len(trackers))
    row = []
    for t in trackers:
        best = None
        for s in rate_steps:
            a = agg.get(s["id"], {}).get(t)
            if a and a["sustained"]:
                best = s["rate"] if best is None else max(best, s["rate"])
        if summary["unavailable"].get(t):
            row.append("not measured")
        elif best is None:
            row.append(f"< {min(s['rate'] for s in rate_steps):g}/s" if rate_steps else "–")
        else:
            top = max(s["rate"] for s in rate_steps)
            row.append(f"{best:g}/s" + (" (highest step tried)" if best == top else ""))
    w(f"| max sustained announce rate, 1000 conns, p99 ≤ {P99_LIMIT_MS:g} ms | " + " | ".join(row) + " |")
    row = []
    for t in trackers:
        first = None
        for s in rate_steps:
            a = agg.get(s["id"], {}).get(t)
            if a and a["saturated_runs"]:
                first = (s, a)
                break
        if first is None:
            row.append("–")
        else:
            s, a = first
            row.append(f"{s['rate']:g}/s: p99 {f(a['p99_min'], 1)}–{f(a['p99_max'], 1)} ms, delivery "
                       f"{f(min(a['offer_delivery'] or 1, a['answer_delivery'] or 1), 3)}, CPU {f(a['cpu_percent'], 0)} %")
    w("| first saturated step (p99 range over repeats, worse delivery ratio, server CPU) | " + " | ".join(row) + " |")

    def cell_at(step_id: str, key: str, digits: int = 2, suffix: str = "") -> list[str]:
        cells = []
        for t in trackers:
            a = agg.get(step_id, {}).get(t)
            cells.append(f(a.get(key), digits, suffix) if a else "–")
        return cells
    mid = next((s for s in rate_steps if s["rate"] == 1000), rate_steps[0] if rate_steps else None)
    if mid:
        w(f"| msgs/s delivered at {mid['rate']:g} announces/s | " + " | ".join(cell_at(mid['id'], 'msgs_per_sec', 0)) + " |")
        w(f"| offer→answer p99 at {mid['rate']:g}/s (ms) | " + " | ".join(cell_at(mid['id'], 'p99')) + " |")
        w(f"| server CPU µs per message at {mid['rate']:g}/s | " + " | ".join(cell_at(mid['id'], 'us_per_msg', 1)) + " |")
    for big in (s for s in steps if s["kind"] == "big"):
        w(f"| 10k conns at {big['rate']:g}/s: msgs/s delivered | " + " | ".join(cell_at(big['id'], 'msgs_per_sec', 0)) + " |")
        w(f"| 10k conns at {big['rate']:g}/s: offer→answer p99 (ms) | " + " | ".join(cell_at(big['id'], 'p99')) + " |")
    idle = next((s for s in steps if s["kind"] == "idle"), None)
    if idle:
        cells = []
        for t in trackers:
            a = agg.get(idle["id"], {}).get(t)
            cells.append(f"{a['rss_delta'] / idle['connections'] / 1024:.1f} KiB" if a and a.get("rss_delta") else "–")
        w(f"| memory per idle announced connection (10k) | " + " | ".join(cells) + " |")
    w("")
    w("aquatic_ws's offer→answer p99 is above 10 ms even at the lowest rate because of the "
      "missing TCP_NODELAY (see Set-up), not for lack of CPU: its p50 stays below 1 ms at light "
      "load; its CPU row in each step shows when it runs out of core.")
    w("")
    w(f"![delivered msgs/s vs offered rate]({prefix}-throughput.svg)")
    w("")
    w(f"![offer->answer p99 vs offered rate]({prefix}-p99.svg)")
    w("")
    w(f"![server CPU per message vs offered rate]({prefix}-cpu.svg)")
    w("")

    # per step tables
    w("## Per step")
    w("")
    peers = [t for t in trackers if t != "ours"]
    rows = [
        ("offered announces/s (achieved)", "announces_per_sec", 0, ""),
        ("delivered msgs/s (in+out)", "msgs_per_sec", 0, ""),
        ("… of which extra announce responses to answers", "unmatched_per_sec", 0, ""),
        ("signalling msgs/s (without those)", "signal_msgs_per_sec", 0, ""),
        ("offer→answer p50 (ms)", "p50", 2, ""),
        ("offer→answer p99 (ms)", "p99", 2, ""),
        ("offer→answer p99.9 (ms)", "p999", 2, ""),
        ("announce round trip p99 (ms)", "announce_p99", 2, ""),
        ("offer delivery", "offer_delivery", 4, ""),
        ("answer delivery", "answer_delivery", 4, ""),
        ("errors (count)", "errors", 0, ""),
        ("server CPU (% of a core)", "cpu_percent", 0, ""),
        ("server CPU µs / msg", "us_per_msg", 1, ""),
        ("server CPU µs / signalling msg", "us_per_signal_msg", 1, ""),
        ("server RSS at end of window (MiB)", "rss_mb", 1, ""),
        ("server run-queue wait (%)", "server_wait", 1, ""),
        ("client CPU (% of a core)", "client_cpu", 0, ""),
        ("host busy (% of all CPUs)", "host_busy", 0, ""),
        ("connections established (whole run)", "established", 0, ""),
        ("connection attempts failed (whole run)", "conn_failed", 0, ""),
    ]
    for s in steps:
        if s["kind"] == "idle":
            continue
        w(f"### `{s['id']}`: {s['describe']}")
        w("")
        head = "| | " + " | ".join(SHORT[t] for t in trackers)
        if "ours" in trackers:
            head += "".join(f" | ours / {SHORT[p]}" for p in peers)
        w(head + " |")
        w("|---|" + "---|" * (len(trackers) + (len(peers) if "ours" in trackers else 0)))
        for label, key, digits, suffix in rows:
            cells = []
            vals = {}
            for t in trackers:
                a = agg.get(s["id"], {}).get(t)
                v = a.get(key) if a else None
                vals[t] = v
                text = f(v, digits, suffix)
                if key == "p99" and a and a.get("runs", 0) > 1 and v is not None:
                    text += f" ({f(a['p99_min'])}–{f(a['p99_max'])})"
                cells.append(text)
            if "ours" in trackers:
                no_ratio = key not in RATIO_KEYS
                cells += ["" if no_ratio else ratio(vals.get("ours"), vals.get(p)) for p in peers]
            w(f"| {label} | " + " | ".join(cells) + " |")
        for side, core in (("server", SERVER_CORE), ("client", CLIENT_CORE)):
            cells = []
            for t in trackers:
                a = agg.get(s["id"], {}).get(t)
                sp = a.get(f"core_{side}") if a else None
                cells.append(f"{sp['user']:.0f} / {sp['system']:.0f} / {sp['softirq']:.0f} / {sp['idle']:.0f}"
                             if sp else "–")
            if any(c != "–" for c in cells):
                if "ours" in trackers:
                    cells += [""] * len(peers)
                w(f"| core {core} ({side}): user / system / softirq / idle % | " + " | ".join(cells) + " |")
        status = []
        for t in trackers:
            a = agg.get(s["id"], {}).get(t)
            if not a:
                ran = any(r["step"] == s["id"] and r["tracker"] == t for r in summary["runs"])
                status.append("not measured" if summary["unavailable"].get(t) else "failed" if ran else "not run")
            else:
                k, runs_ = a["saturated_runs"], a["runs"]
                status.append("**saturated**" if k == runs_ else f"saturated in {k} of {runs_} runs" if k else "ok")
        if "ours" in trackers:
            status += [""] * len(peers)
        w("| **status** | " + " | ".join(status) + " |")
        w("")
        notes = []
        for t in trackers:
            a = agg.get(s["id"], {}).get(t)
            if not a:
                continue
            seen: dict[str, list[str]] = {}
            for n in a["notes"]:
                seen.setdefault(re.sub(r"\d+(\.\d+)?", "#", n), []).append(n)
            for group in seen.values():
                more = f" (similar in {len(group)} runs)" if len(group) > 1 else ""
                notes.append(f"{SHORT[t]}: {group[0]}{more}")
            if a.get("failed_by_cause"):
                causes = "; ".join(f"{k} ×{v}" for k, v in sorted(a["failed_by_cause"].items(), key=lambda kv: -kv[1]))
                notes.append(f"{SHORT[t]}: connection attempts failed over {a['runs']} run(s): {causes}; "
                             "those in the measurement window count as errors (the tester retries them)")
            if a["failures"]:
                top = sorted(a["failures"].items(), key=lambda kv: -kv[1])[:3]
                notes.append(f"{SHORT[t]}: failure reasons " + "; ".join(f"{k!r} ×{v}" for k, v in top))
            if a.get("server_dropped"):
                notes.append(f"{SHORT[t]}: the tracker dropped {a['server_dropped']:,.0f} deliveries per run "
                             "(a session's mailbox was full: load shedding by design; /stats.json deliveriesDropped)")
            if a["anomalies"]:
                notes.append(f"{SHORT[t]}: {a['anomalies']:.0f} routing anomalies (offers to self / wrong swarm / misrouted answers)")
            if a["log_issues"]:
                notes.append(f"{SHORT[t]}: {a['log_issues']} warning/error lines in its log, e.g. `{a['log_issue_samples'][0][:160]}`")
            for e in a["errors_text"]:
                notes.append(f"{SHORT[t]}: a run failed: {e}")
        if notes:
            w("Notes from the runs:")
            w("")
            for n in notes:
                w(f"- {n}")
            w("")

    if idle:
        w("## Memory per idle connection")
        w("")
        w(f"Step `{idle['id']}`: {idle['describe']}. The server's VmRSS is read from "
          "`/proc/PID/status` one second after it starts listening (baseline), then every 0.5 s "
          "during the run; *loaded* is the median of the samples between the end of the "
          f"warm-up ({idle['warmup']:g} s, all connections open and announced) and the end of "
          f"the window ({idle['duration']:g} s), while every connection is idle.")
        w("")
        w("| | " + " | ".join(SHORT[t] for t in trackers) + " |")
        w("|---|" + "---|" * len(trackers))

        def mem_row(label, fn):
            cells = []
            for t in trackers:
                a = agg.get(idle["id"], {}).get(t)
                cells.append(fn(a) if a else "–")
            w(f"| {label} | " + " | ".join(cells) + " |")
        mem_row("connections established", lambda a: f"{a['established']:.0f}")
        mem_row("RSS baseline (MiB)", lambda a: f(a.get("rss_baseline", 0) / 1048576, 1))
        mem_row("RSS with 10k idle peers (MiB)", lambda a: f(a.get("rss_loaded", 0) / 1048576, 1))
        mem_row("**bytes per idle connection**", lambda a: f"**{a['rss_delta'] / idle['connections']:,.0f}**" if a.get("rss_delta") else "–")
        mem_row("peers the tracker reported (ours: /stats.json)", lambda a: f"{a['peers_seen']}" if a.get("peers_seen") is not None else "–")
        mem_row("host busy (%)", lambda a: f(a.get("host_busy"), 0))
        w("")
        w("Each figure includes the tracker's user-space socket buffers, its per-connection state "
          "and the peer's entry in its swarm (kernel socket buffers are not in RSS). Ours keeps no "
          "read or write buffer for an idle connection: at the upgrade it takes the socket out of "
          "actix-http's HTTP/1 dispatcher (which would otherwise keep an 8 KiB read and an 8 KiB "
          "write buffer per connection for its whole life), reads through one scratch buffer per "
          "thread and keeps only bytes the kernel has not taken yet (src/http/ws_io.rs). What is "
          "left, by heaptrack at 2000 idle connections (`heaptrack_print --print-peaks`): the "
          "session's task with its actor and WebsocketContext (~700 B), tokio's I/O registration "
          "(256 B, cache-line aligned), the context's output queue that actix-web-actors keeps "
          "after the first message (~160 B), the connection registry entry (~150 B), the peer's "
          "entry in its swarm (~170 B), the actor's mailbox and the addresses held by the swarm "
          "and the registry (~350 B), plus the allocator's own overhead. Node's figure also "
          "depends on when V8 last collected garbage.")
        w("")

    w("## Raw data")
    w("")
    w("Every run's `loadtest --json` report, the server log and the tester's stderr are in "
      f"`{RESULTS.relative_to(REPO) if RESULTS.is_relative_to(REPO) else RESULTS}/` (`STEP-TRACKER-rN.json`, `.server.log`, `.loadtest.log`), with "
      "`summary.json` listing the runs this page was made from; "
      f"`scripts/bench-trackers.sh --render-only{' --quick' if quick else ''}` remakes this page from them.")
    w("")
    doc.write_text("\n".join(lines))

    # charts
    def series(key: str, extra: str | None = None) -> dict:
        out = {}
        names = list(avail)
        if extra and "aquatic" in avail:
            names.insert(names.index("aquatic") + 1, "aquatic:signal")
        for name in names:
            t = name.split(":")[0]
            k = extra if name.endswith(":signal") else key
            pts = []
            for s in rate_steps:
                a = agg.get(s["id"], {}).get(t)
                if a and a.get(k) is not None:
                    pts.append((s["rate"], a[k], not a["sustained"]))
            out[name] = pts
        return out
    (doc_dir / f"{prefix}-throughput.svg").write_text(svg_chart(
        "Delivered messages/s (1000 connections, 100 swarms, 10 offers)",
        "offered announces/s", "msgs/s at the client (in + out)", series("msgs_per_sec", "signal_msgs_per_sec")))
    (doc_dir / f"{prefix}-p99.svg").write_text(svg_chart(
        "Offer→answer p99 latency", "offered announces/s", "p99 (ms, log scale)",
        series("p99"), log_y=True, hline=(P99_LIMIT_MS, f"{P99_LIMIT_MS:g} ms")))
    (doc_dir / f"{prefix}-cpu.svg").write_text(svg_chart(
        "Server CPU time per message", "offered announces/s", "CPU µs per message",
        series("us_per_msg", "us_per_signal_msg")))
    return doc


# ---------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench-trackers.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="""environment:
  AQUATIC_WS=/path/to/aquatic_ws   reuse that binary instead of installing aquatic_ws
                                   into target/bench/aquatic

examples:
  scripts/bench-trackers.sh --quick                  # about 6 minutes, writes target/bench/quick/
  scripts/bench-trackers.sh                          # full run (~35 min), writes docs/benchmarks.md
  scripts/bench-trackers.sh --trackers ours,reference --repeats 3
  scripts/bench-trackers.sh --render-only            # remake docs/benchmarks.md from target/bench/results/
""")
    p.add_argument("--quick", action="store_true",
                   help="short steps (12 s), 1 repeat, rates 500 and 2000 only; "
                   "writes target/bench/quick/ (raw data: target/bench/results/quick/)")
    p.add_argument("--repeats", type=int, default=None, help="runs per step and tracker (default 2, quick 1)")
    p.add_argument("--trackers", default="ours,aquatic,reference",
                   help="comma-separated subset of ours,aquatic,reference (default: all three)")
    p.add_argument("--rates", default=None,
                   help="announce rates of the 1000-connection steps (default 200,500,1000,2000,3000,4000)")
    p.add_argument("--no-big", action="store_true", help="skip the 10k-connection step")
    p.add_argument("--no-idle", action="store_true", help="skip the idle-memory step")
    p.add_argument("--skip-build", action="store_true", help="do not run cargo build (binaries must exist)")
    p.add_argument("--wait-quiet", dest="wait_quiet", action="store_true", default=None,
                   help="wait for 1-min load < --max-load and the --ci-log logs ending in EXIT (default for full runs)")
    p.add_argument("--no-wait-quiet", dest="wait_quiet", action="store_false",
                   help="start at once (default for --quick)")
    p.add_argument("--max-load", type=float, default=1.0, help="1-min load average to wait for (default 1.0)")
    p.add_argument("--quiet-timeout", type=float, default=1800,
                   help="seconds to wait for a quiet machine before going on anyway (default 1800)")
    p.add_argument("--ci-log", default="/tmp/ci-run*.log",
                   help="glob of background CI logs whose last line must start with EXIT (default /tmp/ci-run*.log)")
    p.add_argument("--doc-dir", default=None, help="where benchmarks.md and the SVGs go "
                   "(default docs/, target/bench/quick/ with --quick)")
    p.add_argument("--results-dir", default=None,
                   help="raw data directory, emptied at the start (default target/bench/results/, "
                   "target/bench/results/quick/ with --quick)")
    p.add_argument("--add", action="store_true",
                   help="keep the raw data already in the results directory and add these runs to it "
                   "(a step and tracker run again replace the earlier runs of that pair); e.g. "
                   "--add --trackers ours --rates 5000,6000 --no-big --no-idle probes ours above the table")
    p.add_argument("--render-only", action="store_true",
                   help="only remake the doc from target/bench/results/summary.json")
    args = p.parse_args(argv)
    names = [t.strip() for t in args.trackers.split(",") if t.strip()]
    bad = [t for t in names if t not in TRACKERS]
    if bad or not names:
        p.error(f"--trackers: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(TRACKERS)}")
    args.tracker_list = [t for t in TRACKERS if t in names]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if not 1 <= args.repeats <= 20:
        p.error("--repeats must be between 1 and 20")
    default_rates = "500,2000" if args.quick else "200,500,1000,2000,3000,4000"
    try:
        args.rate_list = [float(r) for r in (args.rates or default_rates).split(",") if r.strip()]
    except ValueError:
        p.error("--rates: a comma-separated list of numbers, e.g. 200,500,1000")
    if any(r <= 0 or r > 100000 for r in args.rate_list):
        p.error("--rates: each rate must be in (0, 100000]")
    if args.wait_quiet is None:
        args.wait_quiet = not args.quick
    args.doc_path = Path(args.doc_dir) if args.doc_dir else (BENCH / "quick" if args.quick else REPO / "docs")
    return args


def main(argv: list[str]) -> int:
    global RESULTS
    args = parse_args(argv)
    if args.results_dir:
        RESULTS = Path(args.results_dir).resolve()
    elif args.quick:
        RESULTS = RESULTS / "quick"  # a trial never replaces the full run's raw data
    handle_signals()
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.doc_path.mkdir(parents=True, exist_ok=True)
    summary_path = RESULTS / "summary.json"
    if args.render_only:
        if not summary_path.exists():
            raise BenchError(f"{summary_path} does not exist: run the benchmark first")
        summary = json.loads(summary_path.read_text())
        summary["aggregates"] = build_aggregates(summary)
        doc = render(summary, args.doc_path)
        log(f"wrote {doc}")
        return 0

    for tool in ("taskset", "cargo"):
        if shutil.which(tool) is None:
            raise BenchError(f"`{tool}` is required but not installed")
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs at least 2 CPUs (server on core 1, tester on core 0)")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile[1] != resource.RLIM_INFINITY and nofile[1] < 10100 and not args.no_big:
        raise BenchError(f"the hard fd limit is {nofile[1]}; the 10k steps need about 10,100 "
                         "(raise it with `ulimit -n 20000` or use --no-big --no-idle)")
    # Servers inherit this limit; the tester raises its own.
    want = 20000 if nofile[1] == resource.RLIM_INFINITY else min(nofile[1], 20000)
    if nofile[0] < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, nofile[1]))

    started = time.time()
    memlock = raise_memlock()
    workdir = BENCH / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    previous = None
    if args.add:
        if not summary_path.exists():
            raise BenchError(f"--add: {summary_path} does not exist; run the benchmark first")
        previous = json.loads(summary_path.read_text())
        if previous.get("quick") != args.quick:
            raise BenchError("--add: the earlier run was " + ("" if previous.get("quick") else "not ")
                             + "a --quick run; add runs of the same kind")
    else:
        for old in RESULTS.glob("*"):
            if old.is_file():
                old.unlink()

    trackers: dict[str, Tracker] = {}
    unavailable: dict[str, str] = {}
    ours = prepare_ours(args.skip_build)  # also builds loadtest, which every tracker needs
    if "ours" in args.tracker_list:
        trackers["ours"] = ours
    if "reference" in args.tracker_list:
        try:
            trackers["reference"] = prepare_reference()
        except Unavailable as err:
            unavailable["reference"] = str(err)
            log(f"bittorrent-tracker not available: {err}")
    if "aquatic" in args.tracker_list:
        try:
            trackers["aquatic"] = prepare_aquatic(workdir)
        except Unavailable as err:
            unavailable["aquatic"] = str(err)
            log(f"aquatic_ws not available: {err}")
    if not trackers:
        raise BenchError("no tracker could be prepared: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    for name, t in trackers.items():
        log(f"{name}: {t.version}" + (f" ({t.note})" if t.note else ""))

    steps = make_steps(args.quick, args.rate_list)
    if args.no_big:
        steps = [s for s in steps if s.kind != "big"]
    if args.no_idle:
        steps = [s for s in steps if s.kind != "idle"]
    order = [n for n in TRACKERS if n in trackers]
    per_run = sum(s.duration + 3 + 4 for s in steps) * len(order) * args.repeats
    log(f"{len(steps)} steps x {len(order)} trackers x {args.repeats} repeats: about {per_run / 60:.0f} min")

    quiet = {"quiet": None, "note": "not checked (--no-wait-quiet)", "load1": loadavg()}
    if args.wait_quiet:
        quiet = wait_quiet(args.max_load, args.quiet_timeout, args.ci_log)
    quiet_text = (f"1-min load average {quiet['load1']:.2f}"
                  + (f" after waiting {quiet.get('waited_s', 0)} s; {quiet.get('ci')}" if args.wait_quiet else
                     " (no wait for a quiet machine)")
                  + ("" if quiet.get("quiet") in (True, None) else " (**still busy when the run started**)"))

    runs: list[RunResult] = []
    total = len(steps) * len(order) * args.repeats
    n = 0
    for repeat in range(1, args.repeats + 1):
        for step in steps:
            for name in order:
                n += 1
                log(f"[{n}/{total}] {step.id} {name} repeat {repeat}")
                r = run_one(trackers[name], step, repeat, workdir)
                runs.append(r)
                if r.ok:
                    mm = metrics_of(r.report)
                    extra = ""
                    if step.kind == "idle" and r.rss_loaded and r.rss_baseline:
                        extra = f", {(r.rss_loaded - r.rss_baseline) / step.connections:,.0f} B/conn"
                    log(f"    {mm['msgs_per_sec']:,.0f} msgs/s, p99 {f(mm['p99'])} ms, "
                        f"delivery {f(mm['offer_delivery'], 4)}/{f(mm['answer_delivery'], 4)}, "
                        f"server cpu {f(mm['cpu_percent'], 0)}%, host busy {f(mm['host_busy'], 0)}%{extra}")
                else:
                    log(f"    FAILED: {r.error}")
                if r.server_log_issues:
                    log(f"    {len(r.server_log_issues)} warning/error lines in the server log, "
                        f"e.g. {r.server_log_issues[0][:200]}")
                time.sleep(2)  # let the sockets of the last run go

    finished = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    command = "scripts/bench-trackers.sh" + ("" if not argv else " " + shlex.join(argv))
    if os.environ.get("AQUATIC_WS"):
        command = f"AQUATIC_WS={shlex.quote(os.environ['AQUATIC_WS'])} {command}"
    summary = {
        "quick": args.quick,
        "command": command,
        "finished": finished,
        "elapsed_min": (time.time() - started) / 60,
        "repeats": args.repeats,
        "machine": machine_facts(),
        "quiet": quiet_text,
        "trackers": [t for t in TRACKERS if t in args.tracker_list],
        "tracker_info": {n: {"version": t.version, "note": t.note} for n, t in trackers.items()},
        "unavailable": unavailable,
        "memlock": memlock,
        "steps": [dict(s.__dict__, describe=s.describe()) for s in steps],
        "runs": [{k: v for k, v in r.__dict__.items() if k != "report"} for r in runs],
    }
    if previous is not None:
        summary = merge_summaries(previous, summary)
    summary_path.write_text(json.dumps(summary, indent=1))
    summary["aggregates"] = build_aggregates(summary)
    doc = render(summary, args.doc_path)
    log(f"wrote {doc}, its SVGs and {summary_path}")
    failed = [r for r in runs if not r.ok]
    if failed:
        log(f"{len(failed)} of {len(runs)} runs failed (listed in the doc's notes)")
    return 0


if __name__ == "__main__":
    run_main(main, BenchError, children)
