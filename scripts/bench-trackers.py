#!/usr/bin/env python3
"""Side-by-side benchmark of WebTorrent trackers: ours (p2p-mediastream), aquatic_ws and
the reference bittorrent-tracker (npm). Orchestrated by scripts/bench-trackers.sh; the
Python standard library only (3.11+).

Every server runs pinned to core 1 (taskset -c 1), the load tester to core 0, on loopback.
Each (step, tracker, repeat) gets a freshly started server. Results go to
target/bench/results/*.json (the load tester's --json reports plus summary.json), and the
report (scripts/bench_report.py) to docs/benchmarks.md with SVG charts
(target/bench/quick/ for --quick runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import re
import resource
import shlex
import shutil
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
from bench_common import (LOADTEST_BIN, OURS_BIN, REPO, Children, build_binaries,  # noqa: E402
                          capture, commit, core_split, core_ticks, free_port, handle_signals,
                          loadavg, machine_facts, make_log, ours_environment, proc_status,
                          published_command, run_main, stats_json, tail, wait_listening,
                          wait_quiet)
from bench_report import (CLIENT_CORE, SERVER_CORE, SHORT, TRACKERS, RunResult, default_dirs,  # noqa: E402
                          f, load, metrics_of, render, shown_path)

BENCH = REPO / "target" / "bench"
RESULTS, _ = default_dirs(quick=False)
REF_DIR = BENCH / "reference"
REF_VERSION = "11.2.3"
AQUATIC_ROOT = BENCH / "aquatic"
AQUATIC_VERSION = "0.9.0"
CHILDREN_FILE = BENCH / ".bench-trackers.children"
# Options that say where things go or what to wait for, not what is measured: left out of
# the command the report shows (their values are paths of one machine).
LOCAL_OPTIONS = ("--ci-log", "--doc-dir", "--results-dir")



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


# ---------------------------------------------------------------- small helpers

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
        return ours_environment(port) if self.name == "ours" else dict(os.environ)


def prepare_ours(skip_build: bool) -> Tracker:
    build_binaries(children, skip_build, BenchError)
    described, dirty = commit()
    version = capture([str(OURS_BIN), "--version"])
    return Tracker("ours", version=f"{version} (commit {described})", note=f"built with {dirty}" if dirty else "")


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
                          f"$CARGO_HOME/registry/cache; see {shown_path(log_path)}")
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
                raise Unavailable(f"`{shlex.join(argv)}` failed; see {shown_path(log_path)}:\n{tail(log_path, 8)}")
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
        how = f"the binary given in AQUATIC_WS ({shown_path(binary, 'outside the repository')})"
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
        wait_listening(port, proc, 20, Unavailable)
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
            wait_listening(port, server, 30, Unavailable)
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



# ---------------------------------------------------------------- summary

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
                   help="wait for 1-min load < --max-load (and for --ci-log) first (default for full runs)")
    p.add_argument("--no-wait-quiet", dest="wait_quiet", action="store_false",
                   help="start at once (default for --quick)")
    p.add_argument("--max-load", type=float, default=1.0, help="1-min load average to wait for (default 1.0)")
    p.add_argument("--quiet-timeout", type=float, default=1800,
                   help="seconds to wait for a quiet machine before going on anyway (default 1800)")
    p.add_argument("--ci-log", default=None, metavar="GLOB",
                   help="also wait until every log matching GLOB (of CI runs started in the background) "
                   "ends with a line starting with EXIT (default: no such wait); the report says only "
                   "whether other CI runs were active, never the logs' names")
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
                   help="only remake the doc from the results directory's summary.json "
                   "(scripts/bench_report.py)")
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
    results, doc_dir = default_dirs(args.quick)
    args.results_path = Path(args.results_dir).resolve() if args.results_dir else results
    args.doc_path = Path(args.doc_dir) if args.doc_dir else doc_dir
    return args


def check_machine(args: argparse.Namespace) -> None:
    """The tools, cores and file descriptors the run needs; raises the fd limit for the servers."""
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


def previous_summary(args: argparse.Namespace, summary_path: Path) -> dict | None:
    """With --add, the summary the new runs are added to; without, None (and the results
    directory is emptied)."""
    if not args.add:
        for old in RESULTS.glob("*"):
            if old.is_file():
                old.unlink()
        return None
    if not summary_path.exists():
        raise BenchError(f"--add: {summary_path} does not exist; run the benchmark first")
    previous = json.loads(summary_path.read_text())
    if previous.get("quick") != args.quick:
        raise BenchError("--add: the earlier run was " + ("" if previous.get("quick") else "not ")
                         + "a --quick run; add runs of the same kind")
    return previous


def prepare_trackers(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Tracker], dict[str, str]]:
    """The trackers to measure, and why the others asked for cannot be."""
    trackers: dict[str, Tracker] = {}
    unavailable: dict[str, str] = {}
    ours = prepare_ours(args.skip_build)  # also builds loadtest, which every tracker needs
    if "ours" in args.tracker_list:
        trackers["ours"] = ours
    for name, prepare in (("reference", prepare_reference), ("aquatic", lambda: prepare_aquatic(workdir))):
        if name not in args.tracker_list:
            continue
        try:
            trackers[name] = prepare()
        except Unavailable as err:
            unavailable[name] = str(err)
            log(f"{SHORT[name]} not available: {err}")
    if not trackers:
        raise BenchError("no tracker could be prepared: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    for name, t in trackers.items():
        log(f"{name}: {t.version}" + (f" ({t.note})" if t.note else ""))
    return trackers, unavailable


def machine_state(args: argparse.Namespace) -> str:
    """How busy the machine was when the runs started, as the report says it; waits for a
    quiet machine first with --wait-quiet."""
    if not args.wait_quiet:
        return f"1-min load average {loadavg():.2f} (no wait for a quiet machine)"
    quiet = wait_quiet(args.max_load, args.quiet_timeout, args.ci_log, log)
    return (f"1-min load average {quiet['load1']:.2f} after waiting {quiet['waited_s']} s"
            + (f"; {quiet['ci']}" if quiet["ci"] else "")
            + ("" if quiet["quiet"] else " (**still busy when the run started**)"))


def run_all(steps: list[Step], trackers: dict[str, Tracker], repeats: int, workdir: Path) -> list[RunResult]:
    """Every (repeat, step, tracker) in turn, each on a fresh server, logging its figures."""
    order = [n for n in TRACKERS if n in trackers]
    runs: list[RunResult] = []
    total = len(steps) * len(order) * repeats
    n = 0
    for repeat in range(1, repeats + 1):
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
    return runs


def main(argv: list[str]) -> int:
    global RESULTS
    args = parse_args(argv)
    RESULTS = args.results_path
    handle_signals()
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.doc_path.mkdir(parents=True, exist_ok=True)
    summary_path = RESULTS / "summary.json"
    if args.render_only:
        if not summary_path.exists():
            raise BenchError(f"{summary_path} does not exist: run the benchmark first")
        log(f"wrote {render(load(RESULTS), args.doc_path, RESULTS)}")
        return 0

    check_machine(args)
    started = time.time()
    memlock = raise_memlock()
    workdir = BENCH / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    previous = previous_summary(args, summary_path)
    trackers, unavailable = prepare_trackers(args, workdir)
    steps = [s for s in make_steps(args.quick, args.rate_list)
             if not (args.no_big and s.kind == "big") and not (args.no_idle and s.kind == "idle")]
    per_run = sum(s.duration + 3 + 4 for s in steps) * len(trackers) * args.repeats
    log(f"{len(steps)} steps x {len(trackers)} trackers x {args.repeats} repeats: about {per_run / 60:.0f} min")
    quiet_text = machine_state(args)
    runs = run_all(steps, trackers, args.repeats, workdir)

    command = published_command("scripts/bench-trackers.sh", argv, LOCAL_OPTIONS)
    if os.environ.get("AQUATIC_WS"):
        command = f"AQUATIC_WS=/path/to/aquatic_ws {command}"
    summary = {
        "quick": args.quick,
        "command": command,
        "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
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
    doc = render(load(RESULTS), args.doc_path, RESULTS)
    log(f"wrote {doc}, its SVGs and {summary_path}")
    failed = [r for r in runs if not r.ok]
    if failed:
        log(f"{len(failed)} of {len(runs)} runs failed (listed in the doc's notes)")
    return 0


if __name__ == "__main__":
    run_main(main, BenchError, children)
