#!/usr/bin/env python3
"""Soak test of our tracker (p2p-mediastream): a steady, moderate load with churn for N
minutes, sampling the server's memory and its own counters, then checks that memory stayed
flat, that every peer and swarm goes away once the load stops, and that the server logged no
error. Orchestrated by scripts/soak.sh; Python 3.11+, standard library only.

Results: target/bench/soak/ (summary.json, samples.csv, loadtest.json, server.log), and the
report (scripts/soak_report.py) docs/soak.md with docs/soak.svg (for runs shorter than 10
minutes: target/bench/soak/). Exit code: 0 all checks passed, 1 a check failed, 2 the soak
could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

# bench_common.py sits next to this file: found from any working directory (even under
# python3 -P), and not compiled into a scripts/__pycache__/ that git would list.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (LOADTEST_BIN, OURS_BIN, REPO, Children, build_binaries,  # noqa: E402
                          commit, cpu_model, free_port, handle_signals, kernel, make_log,
                          proc_status, published_command, run_main, stats_json, tail)
from soak_report import OUT, SAMPLE_EVERY, default_doc_dir, load, render  # noqa: E402

CHILDREN_FILE = OUT / ".soak.children"
SETTLE_TIMEOUT = 60.0
RSS_GROWTH_LIMIT = 0.10
SERVER_LOG = OUT / "server.log"
LOADTEST_JSON = OUT / "loadtest.json"
LOADTEST_LOG = OUT / "loadtest.log"



class SoakError(Exception):
    pass


log = make_log("soak")
children = Children(CHILDREN_FILE, log, kill_note="{what} ignored SIGTERM: SIGKILL", sweep_exited=False)


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None



# ---------------------------------------------------------------- steps

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/soak.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: scripts/soak.sh --minutes 2   # a short trial, report in target/bench/soak/")
    p.add_argument("--minutes", type=float, default=10, help="minutes of load (default 10)")
    p.add_argument("--connections", type=int, default=2000, help="simulated peers (default 2000)")
    p.add_argument("--rate", type=float, default=400, help="announces per second (default 400)")
    p.add_argument("--churn-per-sec", type=float, default=20, help="connections closed and reopened per second (default 20)")
    p.add_argument("--swarms", type=int, default=200, help="swarms (default 200, 4 of them hot)")
    p.add_argument("--warmup", type=float, default=30, help="seconds excluded from the figures and the RSS check (default 30)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server to core 1 and the tester to core 0")
    p.add_argument("--skip-build", action="store_true", help="do not run cargo build (binaries must exist)")
    p.add_argument("--doc-dir", default=None,
                   help="where soak.md and soak.svg go (default docs/ for runs of 10 minutes or more, else target/bench/soak/)")
    a = p.parse_args(argv)
    if not 0.5 <= a.minutes <= 24 * 60:
        p.error("--minutes must be between 0.5 and 1440")
    if not 10 <= a.connections <= 15000:
        p.error("--connections must be between 10 and 15000")
    if a.rate <= 0 or a.churn_per_sec < 0 or a.swarms < 5:
        p.error("--rate must be > 0, --churn-per-sec >= 0, --swarms >= 5")
    if a.warmup * 2 >= a.minutes * 60:
        p.error("--warmup must be less than half the run")
    a.doc_path = Path(a.doc_dir) if a.doc_dir else default_doc_dir(a.minutes)
    a.duration = a.minutes * 60
    return a


def prepare(a: argparse.Namespace) -> None:
    """Builds the binaries; checks the cores for pinning and raises the fd limit."""
    build_binaries(children, a.skip_build, SoakError)
    if not a.no_pin and (os.cpu_count() or 1) < 2:
        raise SoakError("pinning needs 2 CPUs; use --no-pin")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile[0] < a.connections + 200:
        want = a.connections + 1000
        if nofile[1] != resource.RLIM_INFINITY and nofile[1] < want:
            raise SoakError(f"the fd limit ({nofile[1]}) is too low for {a.connections} connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, nofile[1]))


def start_server(a: argparse.Namespace, port: int) -> subprocess.Popen:
    """Our server on 127.0.0.1:`port`, once it answers /stats.json (30 s at most)."""
    env = dict(os.environ)
    env.update({
        "TRACKER__SERVER__HOST": "127.0.0.1",
        "TRACKER__SERVER__PORT": str(port),
        "RUST_LOG": "warn,p2p_mediastream=info",
    })
    pin = [] if a.no_pin else ["taskset", "-c", "1"]
    with open(SERVER_LOG, "w") as out:
        server = children.spawn(pin + [str(OURS_BIN)], "p2p-mediastream", stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
    deadline = time.monotonic() + 30
    while stats_json(port) is None:
        if server.poll() is not None:
            raise SoakError(f"the server exited with {server.returncode}:\n{tail(SERVER_LOG, 10)}")
        if time.monotonic() > deadline:
            raise SoakError(f"the server does not answer /stats.json after 30 s:\n{tail(SERVER_LOG, 10)}")
        time.sleep(0.3)
    return server


def loadtest_argv(a: argparse.Namespace, port: int, server_pid: int) -> list[str]:
    pin = [] if a.no_pin else ["taskset", "-c", "0"]
    return pin + [
        str(LOADTEST_BIN), "--url", f"ws://127.0.0.1:{port}/announce",
        "-c", str(a.connections), "--source-ips", "4", "--connect-rate", "500",
        "--swarms", str(a.swarms), "--hot-swarms", "4", "--hot-share", "0.3",
        "--rate", f"{a.rate:g}", "--offers", "5", "--sdp-bytes", "1500",
        "--churn-per-sec", f"{a.churn_per_sec:g}", "--scrape-ratio", "0.05",
        "-d", f"{a.duration:g}", "--warmup", f"{a.warmup:g}", "--drain", "3",
        "--json", "-q", "--server-pid", str(server_pid)]


class Sampler:
    """One sample of the server every SAMPLE_EVERY seconds: its memory, threads, fds and
    CPU from /proc, its peers, swarms and connections from /stats.json."""

    def __init__(self, server: subprocess.Popen, port: int) -> None:
        self.server, self.port = server, port
        self.samples: list[dict] = []
        self.last_cpu, self.last_t = cpu_seconds(server.pid), 0.0

    def take(self, now: float, phase: str) -> dict:
        pid = self.server.pid
        st = stats_json(self.port) or {}
        ps = proc_status(pid)
        cpu = cpu_seconds(pid)
        cpu_pct = None
        if cpu is not None and self.last_cpu is not None and now > self.last_t:
            cpu_pct = (cpu - self.last_cpu) / (now - self.last_t) * 100
        self.last_cpu, self.last_t = cpu, now
        s = {"t": round(now, 1), "phase": phase,
             "rss": ps.get("VmRSS"), "hwm": ps.get("VmHWM"), "threads": ps.get("Threads"),
             "fds": fd_count(pid), "cpu_percent": cpu_pct,
             "peers": st.get("peersCount"), "swarms": st.get("torrentsCount"),
             "connections": st.get("connections"),
             "dropped": st.get("deliveriesDropped")}
        self.samples.append(s)
        if len(self.samples) % 12 == 1 or phase == "after":
            log(f"t={now:5.0f}s rss {(s['rss'] or 0) / 1048576:6.1f} MiB  peers {s['peers']}  "
                f"swarms {s['swarms']}  conns {s['connections']}  cpu {cpu_pct or 0:.0f}%")
        return s


def run_load(a: argparse.Namespace, server: subprocess.Popen, port: int) -> tuple[Sampler, float | None, float | None]:
    """Runs the load tester, sampling the server, then samples every second until peers,
    swarms and connections are back to 0 (SETTLE_TIMEOUT at most). Returns the sampler,
    when the load stopped and how long after it everything was back to 0 (None: it was not)."""
    argv = loadtest_argv(a, port, server.pid)
    sampler = Sampler(server, port)
    send_end = settled_at = None
    with open(LOADTEST_JSON, "w") as jout, open(LOADTEST_LOG, "w") as eout:
        eout.write(f"$ {shlex.join(argv)}\n")
        eout.flush()
        t0 = time.monotonic()
        loadtest = children.spawn(argv, "loadtest", stdout=jout, stderr=eout, cwd=REPO)
        try:
            next_sample = 0.0
            budget = a.duration + 3 + 120
            while True:
                now = time.monotonic() - t0
                lt_running = loadtest.poll() is None
                if not lt_running and send_end is None:
                    send_end = now
                    children.forget(loadtest)
                    log(f"load stopped (loadtest exit {loadtest.returncode}); waiting up to "
                        f"{SETTLE_TIMEOUT:.0f} s for peers and swarms to reach 0")
                if now > budget and lt_running:
                    raise SoakError(f"loadtest still running after {budget:.0f} s")
                if server.poll() is not None:
                    raise SoakError(f"the server died (exit {server.returncode}) at {now:.0f} s:\n{tail(SERVER_LOG, 10)}")
                if send_end is not None:
                    s = sampler.take(now, "after")
                    if s["peers"] == 0 and s["swarms"] == 0 and s["connections"] == 0:
                        settled_at = now - send_end
                        break
                    if now >= send_end + SETTLE_TIMEOUT:
                        break
                    time.sleep(1.0)
                    continue
                if now >= next_sample:
                    sampler.take(now, "load")
                    next_sample += SAMPLE_EVERY
                time.sleep(0.25)
        finally:
            children.stop(loadtest, grace=5)
    return sampler, send_end, settled_at


def rss_checks(a: argparse.Namespace, samples: list[dict]) -> tuple[tuple, dict]:
    """The RSS-flat check, and the figures behind it: the second and last quarters' mean RSS
    of the steady phase, the growth between them, the slope over its second half."""
    steady = [s for s in samples if s["phase"] == "load" and a.warmup <= s["t"] <= a.duration and s["rss"]]
    q = len(steady) // 4
    figures: dict = {"rss_q2": None, "rss_q4": None, "growth": None, "slope_mib_per_hour": None}
    if q >= 2:
        q2 = statistics.fmean(s["rss"] for s in steady[q:2 * q])
        q4 = statistics.fmean(s["rss"] for s in steady[3 * q:])
        growth = q4 / q2 - 1
        figures.update(rss_q2=q2, rss_q4=q4, growth=growth)
        check = ("RSS flat: mean of the last quarter of the steady phase within "
                 f"+{RSS_GROWTH_LIMIT * 100:.0f} % of the second quarter's",
                 growth <= RSS_GROWTH_LIMIT,
                 f"{q2 / 1048576:.1f} MiB -> {q4 / 1048576:.1f} MiB ({growth * 100:+.1f} %)")
    else:
        check = ("RSS flat", False, f"only {len(steady)} steady samples; run longer")
    # Least-squares slope over the second half, for information.
    half = steady[len(steady) // 2:]
    if len(half) >= 3:
        xs = [s["t"] for s in half]
        ys = [s["rss"] / 1048576 for s in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        figures["slope_mib_per_hour"] = (sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600) if den else 0.0
    return check, figures


def settle_check(samples: list[dict], settled_at: float | None) -> tuple:
    last = next((s for s in reversed(samples) if s["phase"] == "after"), {})
    return (f"peers, swarms and connections back to 0 within {SETTLE_TIMEOUT:.0f} s after the tester closed its connections",
            settled_at is not None,
            (f"0 / 0 / 0, {settled_at:.1f} s after the tester exited" if settled_at is not None else
             f"still peers {last.get('peers')}, swarms {last.get('swarms')}, connections {last.get('connections')}"))


def log_check() -> tuple[tuple, list[str], list[str]]:
    """The no-error check of the server log, with its error and warning lines."""
    issues = []
    warns = []
    for line in SERVER_LOG.read_text(errors="replace").splitlines():
        if re.search(r"\bERROR\b|panicked", line):
            issues.append(line)
        elif re.search(r"\bWARN\b", line):
            warns.append(line)
    return (("no ERROR or panic in the server log", not issues,
             f"{len(issues)} error lines, {len(warns)} warnings" + (f"; first: {issues[0][:200]}" if issues else "")),
            issues, warns)


def service_check(report: dict | None) -> tuple:
    """Offers and answers delivered, few errors and no misrouting, by the load tester's report."""
    if not report:
        return ("loadtest report", False, f"no JSON report; see {LOADTEST_LOG.relative_to(REPO)}")
    t = report["traffic"]
    e = report["errors"]
    od = t.get("offer_delivery_ratio") or 0
    ad = t.get("answer_delivery_ratio") or 0
    er = e.get("error_rate") or 0
    anomalies = t["offers_to_self"] + t["offers_wrong_swarm"] + t["answers_misrouted"]
    return ("served correctly throughout: offer and answer delivery >= 0.98, error rate <= 2 %, no misrouting",
            od >= 0.98 and ad >= 0.98 and er <= 0.02 and not anomalies,
            f"delivery {od:.4f} / {ad:.4f}, error rate {er * 100:.2f} %, anomalies {anomalies}")


def write_csv(samples: list[dict]) -> None:
    keys = ["t", "phase", "rss", "hwm", "threads", "fds", "cpu_percent", "peers", "swarms", "connections", "dropped"]
    with open(OUT / "samples.csv", "w") as fcsv:
        fcsv.write(",".join(keys) + "\n")
        for s in samples:
            fcsv.write(",".join("" if s.get(k) is None else str(s[k]) for k in keys) + "\n")


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    handle_signals()
    OUT.mkdir(parents=True, exist_ok=True)
    a.doc_path.mkdir(parents=True, exist_ok=True)
    prepare(a)

    port = free_port()
    started = dt.datetime.now(dt.timezone.utc)
    server = start_server(a, port)
    try:
        time.sleep(1)
        base = proc_status(server.pid)
        log(f"server pid {server.pid} on 127.0.0.1:{port}, RSS {base.get('VmRSS', 0) / 1048576:.1f} MiB; "
            f"load for {a.minutes:g} min")
        sampler, send_end, settled_at = run_load(a, server, port)
        end_status = proc_status(server.pid)
    finally:
        code = children.stop(server, grace=20)
    log(f"server stopped (exit {code})")

    samples = sampler.samples
    write_csv(samples)
    report = json.loads(LOADTEST_JSON.read_text()) if LOADTEST_JSON.stat().st_size else None
    rss_check, figures = rss_checks(a, samples)
    no_errors, issues, warns = log_check()
    checks = [rss_check, settle_check(samples, settled_at), no_errors, service_check(report)]
    passed = all(c[1] for c in checks)

    described, dirty = commit()
    summary = {"started": started.isoformat(), "started_text": started.strftime("%Y-%m-%d %H:%M"),
               "minutes": a.minutes, "command": published_command("scripts/soak.sh", argv, ("--doc-dir",)),
               "settings": {k: getattr(a, k) for k in ("connections", "swarms", "rate", "churn_per_sec",
                                                       "warmup", "duration", "no_pin")},
               "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": kernel()},
               "commit": described + (f" with {dirty}" if dirty else ""),
               "checks": checks, "passed": passed,
               "rss_baseline": base.get("VmRSS"), **figures, "settled_after_s": settled_at, "send_end": send_end,
               "end_status": end_status, "warnings": warns[:20], "errors": issues[:20], "samples": samples}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    doc = render(*load(OUT), a.doc_path)
    for name, ok, detail in checks:
        log(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    log(f"wrote {doc} and its SVG; raw data in {OUT}")
    return 0 if passed else 1


if __name__ == "__main__":
    run_main(main, SoakError, children)
