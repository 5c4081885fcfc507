#!/usr/bin/env python3
"""A/B benchmark of two builds of our tracker: the same steps, alternately, in one run.

    scripts/bench-ab.py --base HEAD~3                 # HEAD~3 against the working tree
    scripts/bench-ab.py --base v1 --new v2 --rates 3000,4000 --repeats 3

Each revision is built (cargo build --release, in a git worktree under target/bench-ab/)
unless it is the working tree, which uses target/release. Every run starts a fresh
server pinned to core 1 (taskset -c 1) with the environment of docs/benchmarks.md, and
our `loadtest` on core 0: 1000 connections over 100 swarms, 10 offers x 400 B per
announce, every offer answered, 25 s with 8 s warm-up; `--big` adds steps with 10,000
connections over 1000 swarms (35 s, 15 s warm-up), `--idle` 10,000 idle announced
connections for memory. Base and new alternate (base, new, base, new, ...) so
that a change in the machine's load hits both alike. The table goes to stdout as
Markdown, with each figure's new/base ratio; the raw loadtest reports (--json) stay in
target/bench-ab/results/. Timings are never asserted: this prints figures, it does not
pass or fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (LOADTEST_BIN, OURS_BIN, REPO, Children, commit, cpu_seconds,  # noqa: E402
                          free_port, handle_signals, loadavg, make_log, ours_environment, proc_status,
                          run_main, wait_listening)

WORK = REPO / "target" / "bench-ab"
log = make_log("bench-ab")
children = Children(WORK / "children", log)


class Failure(Exception):
    """A failure with a message for people (exit 2)."""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def build(rev: str | None) -> tuple[Path, str]:
    """The server binary of `rev` (None: the working tree's target/release) and a label."""
    if rev is None:
        described, dirty = commit()
        return OURS_BIN, f"working tree ({described}{'; ' + dirty if dirty else ''})"
    short = git("rev-parse", "--short", rev)
    tree = WORK / f"tree-{short}"
    if not tree.exists():
        git("worktree", "add", "--detach", str(tree), short)
    log(f"building {rev} ({short}) in {tree.relative_to(REPO)}")
    proc = children.spawn(["cargo", "build", "--release", "--bin", "p2p-mediastream"], f"cargo ({short})",
                          cwd=tree)
    if proc.wait(timeout=3600) != 0:
        raise Failure(f"cargo build of {rev} failed")
    children.forget(proc)
    return tree / "target" / "release" / "p2p-mediastream", f"{rev} ({short})"


def threads_ctxt(pid: int) -> int:
    """Context switches (voluntary + involuntary) of every thread of `pid` so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_step(binary: Path, conns: int, rate: float | None, out: Path) -> dict:
    """One fresh server, one loadtest run; the figures of its window."""
    port = free_port()
    server_log = out.with_suffix(".server.log")
    with open(server_log, "w") as sink:
        server = children.spawn(["taskset", "-c", "1", str(binary)], "server",
                                env=ours_environment(port), stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, server, 30, Failure)
        argv = ["taskset", "-c", "0", str(LOADTEST_BIN), "--url", f"ws://127.0.0.1:{port}/announce",
                "-c", str(conns), "--connect-rate", "2000", "--json", "-q", "--server-pid", str(server.pid)]
        if rate is None:
            argv += ["--source-ips", "4", "--swarms", "100", "--offers", "0", "--interval", "3600",
                     "-d", "25", "--warmup", "18"]
        elif conns > 1000:
            argv += ["--source-ips", "4", "--swarms", "1000", "--rate", str(rate), "--offers", "10",
                     "--sdp-bytes", "400", "-d", "35", "--warmup", "15"]
        else:
            argv += ["--swarms", "100", "--rate", str(rate), "--offers", "10", "--sdp-bytes", "400",
                     "-d", "25", "--warmup", "8"]
        cpu0, ctxt0, rss0 = cpu_seconds(server.pid), threads_ctxt(server.pid), proc_status(server.pid)
        with open(out, "w") as sink:
            tester = children.spawn(argv, "loadtest", stdout=sink, stderr=subprocess.DEVNULL)
            if tester.wait(timeout=120) not in (0, 1):
                raise Failure(f"loadtest failed with code {tester.returncode} (see {out})")
            children.forget(tester)
        cpu1, ctxt1 = cpu_seconds(server.pid), threads_ctxt(server.pid)
        report = json.loads(out.read_text())
    finally:
        children.stop(server)
    traffic, latency = report["traffic"], report["latency_ms"]["signalling_rtt"] or {}
    server_window = report.get("server") or {}
    msgs_per_sec = report["throughput"]["msgs_per_sec"]
    cpu_percent = server_window.get("cpu_percent")
    figures = {
        "msgs/s (in+out)": msgs_per_sec,
        "offer->answer p50 (ms)": latency.get("p50"),
        "offer->answer p99 (ms)": latency.get("p99"),
        "answer delivery": traffic["answer_delivery_ratio"],
        "server CPU (% of a core)": cpu_percent,
        "server CPU us / msg": cpu_percent / 100 * 1e6 / msgs_per_sec if cpu_percent and msgs_per_sec else None,
        "server CPU s (whole run)": (cpu1 or 0) - (cpu0 or 0),
        "server context switches (whole run)": ctxt1 - ctxt0,
        "server run-queue wait (%)": server_window.get("runqueue_wait_percent"),
        "host busy (% of both cores)": report["host"]["busy_percent"],
    }
    if rate is None:
        status = report.get("server") or {}
        rss_idle = status.get("rss_mb_end")
        figures = {"server RSS per idle connection (B)":
                   (rss_idle * 1024 * 1024 - rss0.get("VmRSS", 0)) / conns if rss_idle else None,
                   "connections established": report["connections"]["established"]}
    return figures


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench-ab.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--new", help="git revision to test (default: the working tree, target/release)")
    p.add_argument("--rates", default="2000,3000,4000", help="announce rates, 1000 connections (default %(default)s)")
    p.add_argument("--big", default="", help="announce rates of 10,000-connection steps (1000 swarms, "
                   "4 source IPs, 35 s with 15 s warm-up), e.g. 2000,3000 (default: none)")
    p.add_argument("--repeats", type=int, default=2, help="runs per step and build (default %(default)s)")
    p.add_argument("--idle", action="store_true", help="also measure 10,000 idle announced connections")
    args = p.parse_args(argv)
    try:
        args.rate_list = [float(r) for r in args.rates.split(",") if r]
        args.big_list = [float(r) for r in args.big.split(",") if r]
    except ValueError:
        p.error(f"--rates, --big: not a list of numbers: {args.rates} / {args.big}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 10:
        return f"{value:.2f}"
    return f"{value:,.0f}"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    handle_signals()
    if not LOADTEST_BIN.exists():
        raise Failure(f"{LOADTEST_BIN} is missing: cargo build --release --bin loadtest")
    builds = {"base": build(args.base), "new": build(args.new)}
    results_dir = WORK / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, int, float | None]] = [(f"1000 conns, {r:g} announces/s", 1000, r)
                                                  for r in args.rate_list]
    steps += [(f"10,000 conns, {r:g} announces/s", 10_000, r) for r in args.big_list]
    if args.idle:
        steps.append(("10,000 idle announced connections", 10_000, None))
    print(f"base: {builds['base'][1]}; new: {builds['new'][1]}; {args.repeats} repeat(s), "
          f"1-min load average at the start {loadavg():.2f}\n")
    for title, conns, rate in steps:
        runs: dict[str, list[dict]] = {"base": [], "new": []}
        for repeat in range(args.repeats):
            for name in ("base", "new"):
                log(f"{title}: {name}, run {repeat + 1}")
                out = results_dir / f"{name}-{conns}-{rate}-{repeat}.json"
                runs[name].append(run_step(builds[name][0], conns, rate, out))
        print(f"### {title}\n\n| | base | new | new / base |\n|---|---|---|---|")
        for key in runs["base"][0]:
            def mean(name: str):
                values = [r[key] for r in runs[name] if r[key] is not None]
                return statistics.fmean(values) if values else None

            def spread(name: str) -> str:
                values = [r[key] for r in runs[name] if r[key] is not None]
                return f" ({fmt(min(values))}-{fmt(max(values))})" if len(values) > 1 else ""

            base, new = mean("base"), mean("new")
            ratio = f"{new / base:.2f}x" if base and new is not None else "-"
            print(f"| {key} | {fmt(base)}{spread('base')} | {fmt(new)}{spread('new')} | {ratio} |")
        print()
    print(f"1-min load average at the end {loadavg():.2f}")
    return 0


if __name__ == "__main__":
    run_main(main, Failure, children)
