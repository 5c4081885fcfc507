#!/usr/bin/env python3
"""Cluster benchmark: what sharing swarms over NATS costs. Orchestrated by
scripts/bench-cluster.sh; the Python standard library only (3.11+).

One run, three kinds of step, each on freshly started processes, all on loopback:
  single   one instance, cluster off, at each of --rates announces/s (--repeats times);
  cluster  two instances + nats-server, the load tester's connections split over both
           (connection i -> instance i mod 2, swarms assigned independently, so every
           swarm with two peers or more spans both), same rates (--repeats times);
  kill     the same two at the last rate, one instance SIGKILLed in the middle of the
           window (once).

Pinning (2 cores): the load tester on core 0, every server-side process (the instance, or
both instances and nats-server) on core 1, as scripts/bench-trackers.py pins one server.
The single instance and the cluster thus get the same one core, so their CPU per message
and latencies compare at equal hardware; in the cluster the two instances and the broker
share that core (a worst case for latency: on separate machines each would have its own).

Results go to target/bench/cluster/ (each loadtest --json report, the servers' logs and
summary.json); the report to docs/benchmarks-cluster.md with one SVG chart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chart import Axis, Band, Series, line_chart  # noqa: E402
from bench_common import (LOADTEST_BIN, OURS_BIN, REPO, Children, build_binaries,  # noqa: E402
                          capture, commit, core_split, core_ticks, cpu_seconds, free_port,
                          handle_signals, loadavg, machine_facts, make_log, ours_environment,
                          published_command, run_main, stats_json, tail, wait_listening,
                          wait_quiet)
from bench_report import CLIENT_CORE, SERVER_CORE, f, shown_path  # noqa: E402

BENCH = REPO / "target" / "bench"
RESULTS = BENCH / "cluster"
CHILDREN_FILE = BENCH / ".bench-cluster.children"
DOC = REPO / "docs" / "benchmarks-cluster.md"
CHART = REPO / "docs" / "benchmarks-cluster-kill.svg"
# Everything in the report from this line on is written by hand (measurements of partial
# runs, comparisons with other builds) and kept when the report is rendered again.
KEPT_MARKER = "<!-- Written by hand from here on; bench-cluster.py keeps it when it renders the report. -->"
LOCAL_OPTIONS = ("--nats-server", "--render-only", "--server-binary")
STEPS = ("single", "cluster", "kill")
# The server binary the instances run (--server-binary; the build's by default).
server_binary = OURS_BIN
# Bus message kinds that are no client's request: the cluster's own upkeep.
UPKEEP = ("heartbeat", "leaving")
TARGET_P99_MS = 1.0
TARGET_BUS_RATE = 20_000
# A run with an offer->answer p99 above this is saturated (as in docs/benchmarks.md: 10 ms).
SATURATED_P99_MS = 10.0

log = make_log("bench-cluster")
children = Children(CHILDREN_FILE, log)


class BenchError(Exception):
    """A failure that stops the benchmark, with a message for people."""


# ---------------------------------------------------------------- processes

@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    port: int  # HTTP/WS port (instances), client port (nats-server)
    log_path: Path
    monitor: int = 0  # nats-server's monitoring port


def start_nats(binary: str, tag: str) -> Proc:
    port, monitor = free_port(), free_port()
    log_path = RESULTS / f"{tag}.nats.log"
    argv = ["taskset", "-c", SERVER_CORE, binary, "-a", "127.0.0.1", "-p", str(port),
            "-m", str(monitor)]
    with open(log_path, "w") as out:
        proc = children.spawn(argv, "nats-server", stdout=out, stderr=subprocess.STDOUT)
    wait_listening(port, proc, 20, BenchError)
    wait_listening(monitor, proc, 20, BenchError)
    return Proc("nats", proc, port, log_path, monitor)


def start_instance(tag: str, name: str, nats_port: int | None) -> Proc:
    port = free_port()
    log_path = RESULTS / f"{tag}.{name}.log"
    env = ours_environment(port)
    if nats_port is not None:
        env["TRACKER__CLUSTER__NATS_URLS"] = f"nats://127.0.0.1:{nats_port}"
        env["TRACKER__CLUSTER__INSTANCE_ID"] = name
    with open(log_path, "w") as out:
        proc = children.spawn(["taskset", "-c", SERVER_CORE, str(server_binary)], f"instance {name}",
                              stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_listening(port, proc, 30, BenchError)
    except BenchError as err:
        raise BenchError(f"instance {name}: {err}; log: {tail(log_path, 5)}") from None
    return Proc(name, proc, port, log_path)


def wait_cluster(instances: list[Proc], timeout: float = 30) -> None:
    """Until every instance sees all of them live over the bus."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [((stats_json(i.port) or {}).get("cluster") or {}) for i in instances]
        if all(v.get("busUp") and len(v.get("instances") or []) == len(instances) for v in views):
            return
        time.sleep(0.3)
    raise BenchError(f"the instances did not see each other within {timeout:.0f} s")


def nats_varz(monitor: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=3) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return {}


@dataclass
class Snapshot:
    """Counters read at one moment: CPU seconds per process, the instances' cluster
    counters, nats-server's message counts, per-core jiffies."""
    at: float
    cpu: dict[str, float | None]
    forwarded: dict[str, dict[str, int]]
    nats_in: int | None
    nats_out: int | None
    ticks: dict


def snapshot(procs: list[Proc]) -> Snapshot:
    forwarded, nats_in, nats_out = {}, None, None
    for p in procs:
        if p.name == "nats":
            v = nats_varz(p.monitor)
            nats_in, nats_out = v.get("in_msgs"), v.get("out_msgs")
        else:
            cluster = (stats_json(p.port) or {}).get("cluster") or {}
            forwarded[p.name] = dict(cluster.get("forwarded") or {})
    return Snapshot(time.monotonic(), {p.name: cpu_seconds(p.proc.pid) for p in procs},
                    forwarded, nats_in, nats_out, core_ticks())


def bus_messages(before: Snapshot, after: Snapshot) -> tuple[int, dict[str, int]]:
    """Messages the instances handed to the bus between two snapshots, without upkeep:
    the total and by kind."""
    kinds: dict[str, int] = {}
    for name, counts in after.forwarded.items():
        for kind, n in counts.items():
            if kind not in UPKEEP:
                kinds[kind] = kinds.get(kind, 0) + n - before.forwarded.get(name, {}).get(kind, 0)
    return sum(kinds.values()), {k: v for k, v in kinds.items() if v}


# ---------------------------------------------------------------- one run

@dataclass
class Run:
    step: str
    rate: float
    repeat: int
    ok: bool = False
    error: str = ""
    report: dict | None = None
    load1: float | None = None
    window_s: float = 0.0
    cpu_s: dict = field(default_factory=dict)  # process -> CPU seconds in the window
    bus_msgs: int | None = None
    bus_kinds: dict = field(default_factory=dict)
    nats_in: int | None = None
    nats_out: int | None = None
    cores: dict = field(default_factory=dict)
    kill_at: float | None = None  # seconds after the load tester started
    gone_after: float | None = None  # seconds from the kill until the survivor's view dropped it
    progress: list = field(default_factory=list)  # (t, answers in/s, conns open)
    log_issues: list = field(default_factory=list)


PROGRESS = re.compile(r"\[\s*(\d+)s [a-z ]+\] conns (\d+)/\d+ .*?\| answers out \d+/s in (\d+)/s")
LOG_ISSUE = re.compile(r"\b(ERROR|WARN|panicked)\b")


def loadtest_argv(args: argparse.Namespace, urls: list[str], rate: float, duration: float, seed: int,
                  server_pid: int) -> list[str]:
    argv = ["taskset", "-c", CLIENT_CORE, str(LOADTEST_BIN)]
    for url in urls:
        argv += ["--url", url]
    return argv + ["-c", str(args.connections), "--swarms", str(args.swarms), "--hot-swarms", "0",
                   "--rate", f"{rate:g}", "--offers", str(args.offers),
                   "--sdp-bytes", str(args.sdp_bytes), "--duration", f"{duration:g}",
                   "--warmup", f"{args.warmup:g}", "--connect-rate", "1000",
                   "--seed", str(seed), "--server-pid", str(server_pid), "--json"]


def run_step(args: argparse.Namespace, step: str, rate: float, repeat: int) -> Run:
    run = Run(step, rate, repeat, load1=loadavg())
    tag = f"{step}-{rate:g}-r{repeat}"
    duration = args.kill_duration if step == "kill" else args.duration
    procs: list[Proc] = []
    loadtest = None
    try:
        if step == "single":
            procs.append(start_instance(tag, "a", None))
        else:
            nats = start_nats(args.nats_server, tag)
            procs += [start_instance(tag, "a", nats.port), start_instance(tag, "b", nats.port), nats]
            wait_cluster(procs[:2])
        instances = [p for p in procs if p.name != "nats"]
        time.sleep(1.0)  # let them settle
        urls = [f"ws://127.0.0.1:{p.port}/announce" for p in instances]
        argv = loadtest_argv(args, urls, rate, duration, repeat, instances[0].proc.pid)
        json_path, err_path = RESULTS / f"{tag}.json", RESULTS / f"{tag}.loadtest.log"
        with open(json_path, "w") as jout, open(err_path, "w") as eout:
            eout.write(f"$ {shlex.join(argv)}\n")
            eout.flush()
            t0 = time.monotonic()
            loadtest = children.spawn(argv, "loadtest", stdout=jout, stderr=eout, cwd=REPO)
            # The tester's clock starts ~0.2 s after its process; the window is
            # [warmup, duration) of that clock.
            start, end = 0.2 + args.warmup, 0.2 + duration
            kill_at = 0.2 + args.warmup + (duration - args.warmup) / 2 if step == "kill" else None
            before = after = None
            budget = duration + 60
            while loadtest.poll() is None:
                now = time.monotonic() - t0
                if now > budget:
                    children.stop(loadtest, grace=5)
                    run.error = f"loadtest still running after {budget:.0f} s; killed"
                    return run
                if before is None and now >= start:
                    before = snapshot(procs)
                if kill_at is not None and run.kill_at is None and now >= kill_at:
                    victim = instances[1]
                    os.killpg(victim.proc.pid, signal.SIGKILL)
                    run.kill_at = round(now, 2)
                    log(f"    SIGKILL instance {victim.name} at {now:.1f} s")
                if run.kill_at is not None and run.gone_after is None:
                    view = (stats_json(instances[0].port) or {}).get("cluster") or {}
                    if len(view.get("instances") or [None, None]) == 1:
                        run.gone_after = round(now - run.kill_at, 2)
                if after is None and now >= end:
                    after = snapshot([p for p in procs if p.proc.poll() is None])
                time.sleep(0.1 if run.kill_at is not None and run.gone_after is None else 0.25)
            children.forget(loadtest)
        if loadtest.returncode not in (0, 1):
            run.error = f"loadtest exited with {loadtest.returncode}: {tail(err_path, 5)}"
            return run
        try:
            run.report = json.loads(json_path.read_text())
        except ValueError as err:
            run.error = f"unreadable loadtest JSON ({err})"
            return run
        for line in err_path.read_text(errors="replace").splitlines():
            m = PROGRESS.search(line)
            if m:
                run.progress.append((int(m.group(1)), int(m.group(3)), int(m.group(2))))
        if before is None or after is None:
            run.error = "the run ended before the window's snapshots were taken"
            return run
        run.window_s = after.at - before.at
        run.cpu_s = {name: (after.cpu.get(name) or 0) - (cpu or 0)
                     for name, cpu in before.cpu.items() if after.cpu.get(name) is not None}
        if step == "cluster":
            run.bus_msgs, run.bus_kinds = bus_messages(before, after)
            if before.nats_in is not None and after.nats_in is not None:
                run.nats_in = after.nats_in - before.nats_in
                run.nats_out = after.nats_out - before.nats_out
        run.cores = {core: core_split(before.ticks, after.ticks, core) for core in (SERVER_CORE, CLIENT_CORE)}
        dead = [p.name for p in procs if p.proc.poll() is not None and not (step == "kill" and p is instances[1])]
        if dead:
            run.error = f"died during the run: {', '.join(dead)}"
            return run
        run.ok = True
        return run
    except BenchError as err:
        run.error = str(err)
        return run
    finally:
        children.stop(loadtest, grace=5)
        for p in procs:
            children.stop(p.proc, grace=15)
            try:
                run.log_issues += [f"{p.name}: {line[:200]}" for line in p.log_path.read_text(errors="replace").splitlines()
                                   if LOG_ISSUE.search(line)][:5]
            except OSError:
                pass


# ---------------------------------------------------------------- figures

def figures(run: Run) -> dict:
    """What the report shows of one run."""
    r = run.report or {}
    t, lat, thr = r.get("traffic", {}), r.get("latency_ms", {}), r.get("throughput", {})
    sig = lat.get("signalling_rtt") or {}
    client_msgs = (thr.get("msgs_in") or 0) + (thr.get("msgs_out") or 0)
    server_cpu = sum(run.cpu_s.values())
    out = {
        "p50": sig.get("p50"), "p99": sig.get("p99"), "p999": sig.get("p99_9"),
        "offer_p99": (lat.get("offer_relay") or {}).get("p99"),
        "announce_p99": (lat.get("announce_rtt") or {}).get("p99"),
        "offer_delivery": t.get("offer_delivery_ratio"),
        "answer_delivery": t.get("answer_delivery_ratio"),
        "client_msgs": client_msgs,
        "msgs_per_sec": thr.get("msgs_per_sec"),
        "server_cpu_s": server_cpu,
        "cpu_share": dict(run.cpu_s),
        "us_per_msg": server_cpu * 1e6 / client_msgs if client_msgs else None,
        "server_cpu_pct": server_cpu / run.window_s * 100 if run.window_s else None,
        "client_cpu": (r.get("client") or {}).get("cpu_percent"),
        "host_busy": (r.get("host") or {}).get("busy_percent"),
        "failures": (r.get("errors") or {}).get("failures"),
        "failure_reasons": (r.get("errors") or {}).get("failure_reasons"),
        "by_target": r.get("by_target") or [],
        "conns": r.get("connections") or {},
    }
    if run.bus_msgs is not None and run.window_s > 0:
        out["bus_per_sec"] = run.bus_msgs / run.window_s
        out["bus_per_client_msg"] = run.bus_msgs / client_msgs if client_msgs else None
    return out


def spread(values: list) -> tuple[float | None, float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def cell(values: list, digits: int = 2) -> str:
    """median (min–max) over repeats."""
    med, lo, hi = spread(values)
    if med is None:
        return "–"
    if len([v for v in values if v is not None]) == 1 or lo == hi:
        return f(med, digits)
    return f"{f(med, digits)} ({f(lo, digits)}–{f(hi, digits)})"


# ---------------------------------------------------------------- report

def render(summary: dict) -> str:
    runs = summary["runs"]
    args = summary["args"]
    rates = args["rate_list"]
    top = rates[-1]

    def ok_runs(step: str, rate: float) -> list[dict]:
        return [r for r in runs if r["step"] == step and r["rate"] == rate and r["ok"]]

    def col(step: str, rate: float, key: str) -> list:
        return [r["figures"].get(key) for r in ok_runs(step, rate)]

    out: list[str] = []
    w = out.append
    w("# Cluster benchmark: two instances over NATS against one\n")
    w(f"Generated by `scripts/bench-cluster.sh` on {summary['finished']} (UTC), {summary['elapsed_min']:.0f} min, "
      f"commit {summary['commit']}. Reproduce with:\n")
    w(f"```sh\n{summary['command']}\n```\n")
    w("A benchmark prints figures; nothing here is asserted by a test.\n")
    w("## Set-up\n")
    m = summary["machine"]
    w(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}; {m['rustc']}; "
      f"{summary['nats_version']}.")
    w(f"- **Machine state**: {summary['machine_state']}. 1-min load average before each run: "
      + ", ".join(f"{r['step']}@{r['rate']:g} r{r['repeat']} {f(r['load1'])}" for r in runs) + ". "
      + summary["noise_note"])
    w(f"- Pinning: the load tester (`loadtest`, one thread) on core {CLIENT_CORE}; every server-side process on "
      f"core {SERVER_CORE}: the single instance in *single*, both instances **and** nats-server in *cluster* and "
      f"*kill* (`taskset -c {SERVER_CORE}`). Both set-ups get the same one core, so CPU per message and latency "
      "compare at equal hardware, and the client never takes the servers' core. In the cluster the two "
      "instances and the broker take turns on that core: a worst case for latency (on separate machines each "
      "hop would have a core of its own), a fair one for CPU.")
    w(f"- Load: {args['connections']} connections, {args['swarms']} swarms (no hot swarm, Zipf 1, the load tester's "
      f"long tail), {' and '.join(f'{r:g}' for r in rates)} announces/s in all, {args['offers']} offers × "
      f"{args['sdp_bytes']} B per announce, every offer answered. "
      f"Runs of {args['duration']:g} s with {args['warmup']:g} s warm-up (*single*, *cluster*), "
      f"{args['kill_duration']:g} s with the same warm-up (*kill*, at {top:g}/s). Each run starts fresh processes; "
      "single and cluster runs alternate; everything on loopback.")
    w("- Cluster: `loadtest --url ws://A/announce --url ws://B/announce`: connection *i* goes to instance *i* mod 2, "
      "the swarms are drawn independently of that, so every swarm with two peers or more spans both instances, "
      "and each swarm's owner (rendezvous hashing) is A or B. Instances run with "
      "`TRACKER__CLUSTER__NATS_URLS=nats://127.0.0.1:PORT TRACKER__CLUSTER__INSTANCE_ID=a|b` and the "
      "[cluster] defaults (heartbeat 1 s, expiry 3 s); "
      "`nats-server -a 127.0.0.1 -p PORT -m MONITOR_PORT`.")
    w("- Every instance runs with the environment of docs/benchmarks.md (per-connection limits lifted so that the "
      "tracker's work is measured, not its refusals).")
    w("- Counting: latencies and delivery come from the load tester (events that started in the window). *Bus "
      "messages* are the instances' `/stats.json` `cluster.forwarded` counts (heartbeats left out), read at the "
      "window's start and end; *bus msgs / client msg* divides them by the frames the load tester sent and "
      "received in the window. nats-server's own `/varz` in/out message counts over the same window are a "
      "cross-check. *CPU µs/msg* = CPU seconds of every server-side process (/proc/PID/stat: the instance(s), "
      "plus nats-server in the cluster) over the window ÷ client messages in the window. The orchestrator takes "
      "its snapshots within ~0.3 s of the tester's window edges.\n")

    w("## Results\n")
    w(f"Median over the repeats ({args['repeats']} of each), min–max in brackets.\n")
    sat = [r for r in runs if r["ok"] and r["step"] != "kill"
           and ((r["figures"].get("p99") or 0) > SATURATED_P99_MS
                or min(r["figures"].get("offer_delivery") or 0, r["figures"].get("answer_delivery") or 0) < 0.99)]
    if sat:
        w(f"**Read this first.** {len(sat)} of the {sum(1 for r in runs if r['ok'] and r['step'] != 'kill')} runs "
          f"were saturated (offer→answer p99 above {SATURATED_P99_MS:g} ms, or delivery below 0.99): "
          + ", ".join(f"{r['step']}@{r['rate']:g} r{r['repeat']}" for r in sat) + ". "
          "Where the server-side processes used well under one core and the host was ~100 % busy, they waited "
          "for a CPU that other work held: the latencies and delivery of those runs measure the machine, not "
          "the tracker, and a delivery below 1 there comes from relays later than the tester's 3 s drain. "
          "The structural figures hold through that noise: bus messages per client message (counted, not "
          "timed), and CPU per message (CPU time, not wall time, though contention inflates it somewhat).\n")
    w("| | " + " | ".join(f"single @{r:g}/s | cluster @{r:g}/s" for r in rates) + " |")
    w("|---|" + "---|---|" * len(rates))
    rows = [("offer→answer p50 (ms)", "p50", 2), ("offer→answer p99 (ms)", "p99", 2),
            ("offer→answer p99.9 (ms)", "p999", 2), ("offer relay A→B p99 (ms)", "offer_p99", 2),
            ("announce round trip p99 (ms)", "announce_p99", 2),
            ("offer delivery", "offer_delivery", 4), ("answer delivery", "answer_delivery", 4),
            ("client msgs/s", "msgs_per_sec", 0), ("bus msgs/s (instances' forwarded)", "bus_per_sec", 0),
            ("bus msgs per client msg", "bus_per_client_msg", 3),
            ("server-side CPU µs per client msg", "us_per_msg", 2),
            ("server-side CPU, % of one core", "server_cpu_pct", 0),
            ("host busy % (both cores)", "host_busy", 0), ("client CPU %", "client_cpu", 0)]
    for label, key, digits in rows:
        w(f"| {label} | " + " | ".join(f"{cell(col('single', r, key), digits)} | {cell(col('cluster', r, key), digits)}"
                                      for r in rates) + " |")
    w("")
    added: dict[float, dict] = {}
    for r in rates:
        added[r] = {}
        for q in ("p50", "p99"):
            s_med, c_med = spread(col("single", r, q))[0], spread(col("cluster", r, q))[0]
            added[r][q] = None if s_med is None or c_med is None else c_med - s_med
    w("**Added offer→answer latency of the cluster** (median cluster − median single), with the single "
      "instance's own p99 spread over its repeats (the noise floor of the difference):\n")
    w("| rate | bus msgs/s | added p50 (ms) | added p99 (ms) | single p99 min–max (ms) | cluster p99 min–max (ms) |")
    w("|---|---|---|---|---|---|")
    for r in rates:
        s = spread(col("single", r, "p99"))
        c = spread(col("cluster", r, "p99"))
        w(f"| {r:g}/s | {f(spread(col('cluster', r, 'bus_per_sec'))[0], 0)} | {f(added[r]['p50'])} | "
          f"{f(added[r]['p99'])} | {f(s[1])}–{f(s[2])} | {f(c[1])}–{f(c[2])} |")
    w("")
    for r in rates:
        su, cu = spread(col("single", r, "us_per_msg"))[0], spread(col("cluster", r, "us_per_msg"))[0]
        per = spread(col("cluster", r, "bus_per_client_msg"))[0]
        if su and cu and per:
            w(f"At {r:g}/s the cluster spends {f(cu - su)} µs more server-side CPU per client message than one "
              f"instance, i.e. about **{f((cu - su) / per, 1)} µs per bus message** (both instances' ends and the "
              f"broker), against {f(su)} µs per client message for one instance: the *b* and *c* of the model "
              "in *On paper* below.\n")
    w("An offer→answer trip crosses the bus up to four times (the announce forwarded to the owner and its "
      "reply, the offer delivered to the answerer's instance, the answer forwarded to the owner, the answer "
      "delivered to the offerer's instance), each time a NATS publish, a broker hop and a decode.\n")
    for r in rates:
        cl = ok_runs("cluster", r)
        if not cl:
            continue
        kinds: dict[str, list] = {}
        share: dict[str, list] = {}
        for run in cl:
            for k, v in (run.get("bus_kinds") or {}).items():
                kinds.setdefault(k, []).append(v / run["window_s"])
            for k, v in run["figures"]["cpu_share"].items():
                share.setdefault(k, []).append(v / run["window_s"] * 100)
        w(f"At {r:g}/s, bus messages per second by kind (median): "
          + ", ".join(f"{k} {statistics.median(v):,.0f}" for k, v in sorted(kinds.items())) + "; nats-server counted in "
          + cell([x["nats_in"] / x["window_s"] if x.get("nats_in") is not None else None for x in cl], 0)
          + ", out " + cell([x["nats_out"] / x["window_s"] if x.get("nats_out") is not None else None for x in cl], 0)
          + " msgs/s (in: the instances' publishes, heartbeats included; out: deliveries to subscribers). "
          + "CPU, % of one core: "
          + ", ".join(f"{'instance ' + k if k != 'nats' else 'nats-server'} {statistics.median(v):.0f}"
                      for k, v in sorted(share.items()))
          + "; nats-server CPU per bus message: "
          + cell([x["cpu_s"].get("nats", 0) * 1e6 / x["bus_msgs"] if x.get("bus_msgs") else None for x in cl], 1)
          + " µs.\n")

    w(f"### Instance killed mid-run (at {top:g}/s)\n")
    kill_runs = ok_runs("kill", top)
    k = kill_runs[0]["figures"] if kill_runs else None
    if not kill_runs:
        w("The kill step did not complete: " + "; ".join(r["error"] for r in runs if r["step"] == "kill") + "\n")
    else:
        kr = kill_runs[0]
        window = args["kill_duration"] - args["warmup"]
        w(f"Instance b got SIGKILL {f(kr['kill_at'] - 0.2 - args['warmup'], 1)} s into the {window:g} s window; the "
          f"survivor's view dropped it {f(kr.get('gone_after'), 1)} s later (expiry 3 s). b's connections were lost "
          "and the tester kept retrying them against the dead address (refused): they are not moved to the "
          "survivor, and stop counting as swarm members the moment they are lost.\n")
        w("| | overall | connections of the survivor (a) | connections of the killed instance (b) |")
        w("|---|---|---|---|")
        ta = k["by_target"][0] if k["by_target"] else {}
        tb = k["by_target"][1] if len(k["by_target"]) > 1 else {}

        def ratio(n, d):
            return n / d if n is not None and d else None
        both = k["by_target"]
        w(f"| offer delivery (received / expected) | {f(k['offer_delivery'], 4)} | "
          f"{f(ratio(ta.get('offers_received'), ta.get('offers_expected')), 4)}¹ | "
          f"{f(ratio(tb.get('offers_received'), tb.get('offers_expected')), 4)}¹ |")
        w(f"| answer delivery (received / sent) | {f(k['answer_delivery'], 4)} | | |")
        w(f"| offer→answer completion (answers back / offers expected) | "
          f"{f(ratio(sum(x.get('answers_received', 0) for x in both), sum(x.get('offers_expected', 0) for x in both)), 4)} | "
          f"{f(ta.get('completion_ratio'), 4)} | {f(tb.get('completion_ratio'), 4)} |")
        w(f"| announces sent in the window | {sum(x.get('announces_sent', 0) for x in both):,} | "
          f"{ta.get('announces_sent', 0):,} | {tb.get('announces_sent', 0):,} |")
        w(f"| offer→answer p50 / p99 (ms) | {f(k['p50'])} / {f(k['p99'])} | | |")
        w(f"| announce round trip p99 (ms) | {f(k['announce_p99'])} | | |")
        w(f"| failure reasons received | {k['failures']} | | |")
        w("")
        w("¹ offers received by that side's connections ÷ offers its connections' announces expected: different "
          "offers on the two sides of the fraction, so indicative only. The completion row is exact per side: of "
          "the offers a side's connections made, the share whose answer came back.\n")
        reasons = k.get("failure_reasons") or {}
        if reasons:
            w("Failure reasons: " + "; ".join(f"`{txt}` × {n}" for txt, n in list(reasons.items())[:6]) + ".\n")
        gone = kr.get("gone_after")
        outage = gone if gone is not None else 3.0
        w("**Accounting.** An announce expects min(offers, peers − 1) relays, where peers are the simulated peers "
          "of its swarm connected at that moment (the tester's truth, not the tracker's). At the kill: (1) what was "
          "in flight to, from or through b is lost; (2) until the survivor's view drops b, swarms owned by b are "
          "unreachable: announces forwarded there wait for a reply that does not come, and a's offers in those "
          "swarms are not relayed; in the swarms a owns, about half the offers still go to b's peers, which the "
          "tester no longer expects. The survivor drops b as soon as NATS answers \"no responders\" to a message "
          "it sends there (its next forwarded request or relay, or the probe of a request left without a reply "
          "for a heartbeat interval), and the announces waiting for b are made again at the new owner; the 3 s "
          "expiry bounds only a host that vanishes without closing its sockets (NATS then still holds its "
          "subscriptions); (3) then a owns every swarm, its sessions re-join, and delivery is whole again. b's "
          "connections announce nothing after the kill. The overall column mixes the survivor's losses with b's "
          "in-flight ones; the survivor's column is what its users saw.\n")
        w(f"So the loss is about (½ + ½·½) × the time until the view drops b ≈ 0.75 × {outage:.1f} s of the "
          f"survivor's traffic plus what was in flight, whatever the window: over this {window:g} s window "
          f"~{0.75 * outage / window:.1%}"
          + (" (no view change was seen: the expiry assumed)" if gone is None else "") + ".\n")
        w(f"![answers received per second around the kill]({CHART.name})\n")

    w("## Targets\n")
    p99_added = added[top]["p99"]
    bus = spread(col("cluster", top, "bus_per_sec"))[0]
    steady = [v for r in rates for key in ("offer_delivery", "answer_delivery")
              for v in col("cluster", r, key) if v is not None]
    w("| target | measured | met |")
    w("|---|---|---|")
    # A difference of latencies means something only where neither side was saturated.
    at_top = ok_runs("single", top) + ok_runs("cluster", top)
    saturated = [r for r in at_top
                 if (r["figures"].get("p99") or 0) > SATURATED_P99_MS
                 or min(r["figures"].get("offer_delivery") or 0, r["figures"].get("answer_delivery") or 0) < 0.99]
    cpu = spread(col("cluster", top, "server_cpu_pct"))[0]
    if p99_added is None:
        verdict = "cannot tell (no complete runs)"
    elif p99_added <= TARGET_P99_MS:
        verdict = "yes" + (f" (but {len(saturated)} of the {len(at_top)} runs were saturated)" if saturated else "")
    else:
        verdict = ("no" + (f": {len(saturated)} of the {len(at_top)} runs at {top:g}/s were saturated (p99 above "
                           f"{SATURATED_P99_MS:g} ms); the cluster's processes used {f(cpu, 0)} % of their one "
                           "shared core, so its p99 is mostly queueing for that core" if saturated else ""))
    w(f"| added p99 ≤ {TARGET_P99_MS:g} ms at ~{TARGET_BUS_RATE:,} bus msgs/s | {f(p99_added)} ms at "
      f"{f(bus, 0)} bus msgs/s ({top:g} announces/s) | {verdict} |")
    w(f"| delivery 1.0 in steady state | worst offer/answer delivery over all cluster runs: "
      f"{f(min(steady), 4) if steady else '–'} | {'yes' if steady and min(steady) >= 1.0 else 'no'}"
      + (" (saturated runs: relays later than the tester's 3 s drain count as lost)"
         if steady and min(steady) < 1.0 and saturated else "") + " |")
    if k:
        surv = k["by_target"][0].get("completion_ratio") if k["by_target"] else None
        worst = min(v for v in (k["offer_delivery"], k["answer_delivery"]) if v is not None)
        w(f"| delivery ≥ 0.99 across an instance kill | overall offer delivery {f(worst, 4)}, survivor's "
          f"completion {f(surv, 4)} over a {args['kill_duration'] - args['warmup']:g} s window | "
          f"{'yes' if worst >= 0.99 and (surv or 0) >= 0.99 else 'no'} |")
    w(f"| single-instance figures unchanged with the cluster off | single @{top:g}/s: p99 "
      f"{cell(col('single', top, 'p99'))} ms, {cell(col('single', top, 'us_per_msg'))} µs/msg | see below |")
    w("")
    w("With `nats_urls` empty no bus code runs: `cluster::join` returns before starting anything, and the "
      "request path asks no owner. The *single* columns are this build with the cluster off; "
      "docs/benchmarks.md has the earlier single-instance figures on a quieter machine (other load shape: "
      "compare trends, not values).\n")

    problems = [r for r in runs if not r["ok"]]
    issues = [f"{r['step']}@{r['rate']:g} r{r['repeat']}: {i}" for r in runs for i in r.get("log_issues", [])]
    if problems or issues:
        w("## Notes\n")
        for r in problems:
            w(f"- {r['step']} at {r['rate']:g}/s, repeat {r['repeat']} failed: {r['error']}")
        if issues:
            w("- Warnings in the servers' logs (expected ones: an instance leaving at the end of a cluster run, "
              "the dead instance in the kill run):")
            for i in issues[:12]:
                w(f"  - `{i}`")
        w("")
    w(SCALING)
    w(f"## Raw data\n\nEach run's `loadtest --json` report, the servers' and the broker's logs and summary.json are "
      f"left in {shown_path(RESULTS)}/ (not committed).\n")
    return "\n".join(out)


SCALING = """## On paper: N instances

Let connections be spread uniformly over N instances (a load balancer without affinity)
and swarms spread over owners by rendezvous hashing. For one signalling exchange, an
announce from a peer on instance X in a swarm owned by O, with K relayed offers to peers on
instances Y1..YK, and their K answers:

| message | crosses the bus when | probability |
|---|---|---|
| announce → owner, and its reply | X ≠ O | (N−1)/N, ×2 messages |
| offer owner → answerer | Yi ≠ O | (N−1)/N, ×K |
| answer → owner | Yi ≠ O | (N−1)/N, ×K |
| answer owner → offerer | X ≠ O | (N−1)/N, ×K |

The client side of the same exchange is 2 + 3K frames (announce, its response, K offers
in, K answers out, K answers in). So every client frame costs on average **(N−1)/N bus
messages**: 0 for one instance, 0.5 for two (what the table above measures: heartbeats
aside, plus the few `leave` messages), 0.67 for three, 0.9 for ten, tending to 1. The
fraction of requests that cross the bus is the same (N−1)/N.

**Connections** grow linearly with N: a socket lives on one instance and costs only that
instance memory; nothing about a socket is replicated (the owner keeps a peer entry with a
remote route).

**Throughput.** Let c be the CPU cost of one client frame on its instance and b the
extra cost of one bus message (encode, publish, receive, decode, on both ends; the table
above gives the sum for N=2 as the difference in CPU µs per message, broker included). One
instance handles a client rate T1 = 1/c per core. N instances handle

    T(N) ≈ N / (c + (N−1)/N · b)

client frames per second per core each: linear in N, with a constant penalty that stops
growing once (N−1)/N ≈ 1. The bus carries (N−1)/N · T(N) messages per second, all through
the broker.

**Where the bus becomes the limit.** NATS core (no JetStream) moves on the order of
millions of small messages per second through one server and one client connection
(`nats bench` figures for payloads of tens to hundreds of bytes); the broker's CPU per
message measured above (nats-server CPU per bus message) says the same on this machine.
Our messages carry SDPs, 0.4–5 KB, so bytes rather than the message count limit first
(1 M msgs/s × 2 KB = 2 GB/s through one process). One of our instances on one core tops out near 100 k client frames/s
(docs/benchmarks.md), i.e. ~100 k bus messages/s at large N. The broker saturates when
N × 100 k ≈ its capacity, roughly **N ≈ 10–20 one-core instances per NATS server** at
full load (fewer with 5 KB SDPs, more with idle-heavy real traffic, which is mostly
connections and few messages). Before that, each instance's single bus connection is a
limit of its own: one NATS client connection carries a few hundred thousand to a million
small messages per second, above one instance's rate.

What to do beyond that:
- **A NATS cluster** (several nats-server routes, `nats_urls` listing them): clients spread
  over servers; a message to an inbox crosses at most one route. This adds capacity and
  survives a broker loss, but every server still carries its clients' share of all
  traffic, and inter-server routes carry the rest.
- **Subject sharding**: give each instance several inbox subjects (or subject prefixes
  per swarm range) and partition instances into groups whose swarms are owned within the
  group (a prefix per group, the load balancer routing by info_hash where it can see it),
  so that most traffic stays inside one group's broker. With affinity (sockets of one
  swarm sent to its owner), the (N−1)/N factor itself drops toward 0: the best lever,
  since WebTorrent clients announce one info_hash per socket in the common case.
- Batch small messages per destination instance in the bus task (one publish carrying
  many relays) if the per-message overhead, not bytes, is what saturates.
## What is left

- Failure detection no longer bounds delivery across a kill: since commit d95d9b9 a
  survivor drops a dead instance on NATS's "no responders" for the first message it sends
  there, and announces waiting for it are made again at the new owner (see *Across an
  instance kill, with "no responders"* below). A host that vanishes without closing its
  sockets is still found by the expiry only.
- The load tester keeps a dead instance's connections on their URL; browsers behind a
  load balancer would reconnect to the survivor. A `--failover` mode would measure that.
- Figures on a dedicated machine with one core per process (the broker, each instance,
  the tester), and N > 2 instances, to check the (N−1)/N model above.
"""


def chart(kill: dict | None, args: dict) -> str | None:
    if not kill or not kill.get("progress"):
        return None
    prog = kill["progress"]
    answers = Series("answers received/s", "#1f77b4", [(t, float(a)) for t, a, _ in prog], markers=False)
    conns = Series("open connections (right axis)", "#ff7f0e", [(t, float(c)) for t, _, c in prog],
                   markers=False, right=True)
    bands = []
    if kill.get("kill_at") is not None:
        k = kill["kill_at"] - 0.2
        gone = kill.get("gone_after") or 0
        bands.append(Band(k, k + max(gone, 0.3), "#fdd", "kill → view drops b", "#a00"))
    return line_chart("Instance b killed mid-run: answers received per second", Axis("seconds since the load started"),
                      Axis("answers/s"), [answers, conns], y_right=Axis("connections"), bands=bands)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench-cluster.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="500,1600",
                   help="announces/s in all, comma-separated (default 500,1600: 1600/s gives ~20k bus msgs/s "
                        "with the other defaults); the kill step runs at the last")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--swarms", type=int, default=100)
    p.add_argument("--offers", type=int, default=10)
    p.add_argument("--sdp-bytes", type=int, default=400)
    p.add_argument("--duration", type=float, default=25)
    p.add_argument("--kill-duration", type=float, default=40)
    p.add_argument("--warmup", type=float, default=8)
    p.add_argument("--repeats", type=int, default=3, help="runs of the single and cluster steps")
    p.add_argument("--steps", default=",".join(STEPS),
                   help="which steps to run (comma-separated among single,cluster,kill); the report "
                        "is rewritten only when all three run, else the runs go to summary-partial.json")
    p.add_argument("--kill-repeats", type=int, default=1, help="runs of the kill step")
    p.add_argument("--server-binary", default=str(OURS_BIN),
                   help="the tracker binary to run (another build, to compare)")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--render-only", action="store_true",
                   help="write the doc again from the last run's summary.json, running nothing")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load average below this")
    p.add_argument("--quiet-timeout", type=float, default=300, help="seconds to wait for it at most")
    p.add_argument("--nats-server", default=shutil.which("nats-server") or "/usr/sbin/nats-server",
                   help="the nats-server binary")
    args = p.parse_args(argv)
    try:
        args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error("--rates must be numbers separated by commas")
    if not args.rate_list or not all(0 < r <= 20000 for r in args.rate_list):
        p.error("--rates must list rates in (0, 20000]")
    if not 1 <= args.repeats <= 10 or not 1 <= args.kill_repeats <= 10:
        p.error("--repeats and --kill-repeats must be 1..10")
    args.step_list = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not args.step_list or any(s not in STEPS for s in args.step_list):
        p.error(f"--steps must list some of {','.join(STEPS)}")
    if args.warmup >= args.duration or args.warmup >= args.kill_duration:
        p.error("--warmup must be shorter than --duration and --kill-duration")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    handle_signals()
    if args.render_only:
        path = RESULTS / "summary.json"
        if not path.exists():
            raise BenchError(f"{shown_path(path)} does not exist: run the benchmark first")
        write_doc(json.loads(path.read_text()))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not os.access(args.nats_server, os.X_OK):
        raise BenchError(f"{args.nats_server} is not executable (Debian: apt-get install nats-server)")
    started = time.time()
    build_binaries(children, args.skip_build, BenchError)
    described, dirty = commit()
    quiet = wait_quiet(args.max_load, args.quiet_timeout, None, log)
    state = (f"1-min load average {quiet['load1']:.2f} after waiting {quiet['waited_s']} s"
             + ("" if quiet["quiet"] else f" (**still above {args.max_load:g} when the run started**)"))
    # single and cluster interleaved, so that a change in the machine's load hits both alike.
    global server_binary
    server_binary = Path(args.server_binary)
    plan = [(step, rate, r) for rate in args.rate_list for r in range(1, args.repeats + 1)
            for step in ("single", "cluster") if step in args.step_list]
    if "kill" in args.step_list:
        plan += [("kill", args.rate_list[-1], r) for r in range(1, args.kill_repeats + 1)]
    runs: list[Run] = []
    for n, (step, rate, repeat) in enumerate(plan, 1):
        log(f"[{n}/{len(plan)}] {step} at {rate:g}/s, repeat {repeat} (load {loadavg():.2f})")
        run = run_step(args, step, rate, repeat)
        runs.append(run)
        if run.ok:
            fg = figures(run)
            log(f"    offer->answer p50 {f(fg['p50'])} p99 {f(fg['p99'])} ms, delivery "
                f"{f(fg['offer_delivery'], 4)}/{f(fg['answer_delivery'], 4)}, {f(fg['msgs_per_sec'], 0)} msgs/s, "
                f"bus {f(fg.get('bus_per_sec'), 0)}/s, {f(fg['us_per_msg'])} us/msg")
        else:
            log(f"    FAILED: {run.error}")
        time.sleep(2)
    loads = [r.load1 for r in runs if r.load1 is not None]
    noisy = max(loads) > args.max_load if loads else True
    noise = ("The load average stayed high during the runs (other engineers' builds and tests share this "
             "machine): **the figures are noisy**; read the spreads, not single values."
             if noisy else "The machine stayed quiet during the runs.")
    summary = {
        "command": published_command("scripts/bench-cluster.sh", argv, LOCAL_OPTIONS),
        "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "elapsed_min": (time.time() - started) / 60,
        "commit": described + (f" ({dirty})" if dirty else ""),
        "machine": machine_facts(),
        "machine_state": state,
        "noise_note": noise,
        "nats_version": capture([args.nats_server, "--version"]),
        "args": {k: v for k, v in vars(args).items() if k not in ("nats_server", "rates", "server_binary")},
        "runs": [dict({k: v for k, v in r.__dict__.items() if k != "report"}, figures=figures(r) if r.ok else {})
                 for r in runs],
    }
    if set(args.step_list) != set(STEPS):
        (RESULTS / "summary-partial.json").write_text(json.dumps(summary, indent=1))
        log(f"wrote {shown_path(RESULTS / 'summary-partial.json')} (a partial run: the report is left as it is)")
        return 0 if all(r.ok for r in runs) else 1
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1))
    write_doc(summary)
    return 0 if all(r.ok for r in runs) else 1


def write_doc(summary: dict) -> None:
    kill = next((r for r in summary["runs"] if r["step"] == "kill" and r["ok"]), None)
    svg = chart(kill, summary["args"])
    if svg:
        CHART.write_text(svg)
    kept = ""
    if DOC.exists():
        old = DOC.read_text()
        at = old.find(KEPT_MARKER)
        if at >= 0:
            kept = "\n" + old[at:]
    DOC.write_text(render(summary) + kept)
    log(f"wrote {shown_path(DOC)}" + (f" and {shown_path(CHART)}" if svg else ""))


if __name__ == "__main__":
    run_main(main, BenchError, children)
