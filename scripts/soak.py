#!/usr/bin/env python3
"""Soak test of our tracker (p2p-mediastream): a steady, moderate load with churn for N
minutes, sampling the server's memory and its own counters, then checks that memory stayed
flat, that every peer and swarm goes away once the load stops, and that the server logged no
error. Orchestrated by scripts/soak.sh; Python 3.11+, standard library only.

Results: target/bench/soak/ (samples.csv, loadtest.json, server.log), and the report
docs/soak.md with docs/soak.svg (for runs shorter than 10 minutes: target/bench/soak/).
Exit code: 0 all checks passed, 1 a check failed, 2 the soak could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
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
from bench_common import (Children, free_port, handle_signals, make_log,  # noqa: E402
                          proc_status, run_main, stats_json, tail)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "target" / "bench" / "soak"
OURS_BIN = REPO / "target" / "release" / "p2p-mediastream"
LOADTEST_BIN = REPO / "target" / "release" / "loadtest"
CHILDREN_FILE = OUT / ".soak.children"
SAMPLE_EVERY = 5.0
SETTLE_TIMEOUT = 60.0
RSS_GROWTH_LIMIT = 0.10


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


# ---------------------------------------------------------------- chart

def chart(samples: list[dict], send_end: float, warmup: float) -> str:
    W, H = 860, 420
    L, R, T, B = 80, 90, 50, 56
    pw, ph = W - L - R, H - T - B
    pts = [s for s in samples if s.get("rss") is not None]
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="60"><text x="10" y="30">no samples</text></svg>\n'
    tmax = max(s["t"] for s in pts) or 1
    rss_max = max(s["rss"] for s in pts) / 1048576
    peers_max = max((s.get("peers") or 0) for s in pts) or 1

    def ticks(hi: float, n: int = 5) -> list[float]:
        raw = hi / n
        mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
        step = next(k * mag for k in (1, 2, 2.5, 5, 10) if k * mag >= raw)
        return [i * step for i in range(0, int(hi / step) + 2)]

    rt = ticks(rss_max * 1.1)
    pt = ticks(peers_max * 1.1)
    r_hi, p_hi = rt[-1], pt[-1]
    fx = lambda t: L + t / tmax * pw  # noqa: E731
    fr = lambda v: T + ph - v / r_hi * ph  # noqa: E731
    fp = lambda v: T + ph - v / p_hi * ph  # noqa: E731
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L + pw / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">Soak: server RSS and peers over time</text>']
    # phases
    o.append(f'<rect x="{L}" y="{T}" width="{fx(min(warmup, tmax)) - L:.1f}" height="{ph}" fill="#f3f3f3"/>')
    o.append(f'<text x="{L + 4}" y="{T + 14}" fill="#888">warm-up</text>')
    if send_end < tmax:
        o.append(f'<rect x="{fx(send_end):.1f}" y="{T}" width="{L + pw - fx(send_end):.1f}" height="{ph}" fill="#eef6ee"/>')
        o.append(f'<text x="{fx(send_end) + 4:.1f}" y="{T + 14}" fill="#585">load stopped</text>')
    for v in rt:
        y = fr(v)
        o.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        o.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#1f77b4">{v:g}</text>')
    for v in pt:
        o.append(f'<text x="{L + pw + 6}" y="{fp(v) + 4:.1f}" fill="#d62728">{v:g}</text>')
    step = 60 if tmax <= 1200 else 300
    for t in range(0, int(tmax) + 1, step):
        o.append(f'<text x="{fx(t):.1f}" y="{T + ph + 18}" text-anchor="middle">{t // 60:d}</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    o.append(f'<text x="{L + pw / 2}" y="{H - 12}" text-anchor="middle">minutes since the load started</text>')
    o.append(f'<text transform="translate(20 {T + ph / 2}) rotate(-90)" text-anchor="middle" fill="#1f77b4">server RSS (MiB)</text>')
    o.append(f'<text transform="translate({W - 18} {T + ph / 2}) rotate(90)" text-anchor="middle" fill="#d62728">peers (stats.json peersCount)</text>')
    rss_path = " ".join(f"{fx(s['t']):.1f},{fr(s['rss'] / 1048576):.1f}" for s in pts)
    o.append(f'<polyline points="{rss_path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    pp = [s for s in pts if s.get("peers") is not None]
    if pp:
        peer_path = " ".join(f"{fx(s['t']):.1f},{fp(s['peers']):.1f}" for s in pp)
        o.append(f'<polyline points="{peer_path}" fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="5 3"/>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


# ---------------------------------------------------------------- main

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
    a.doc_path = Path(a.doc_dir) if a.doc_dir else (REPO / "docs" if a.minutes >= 10 else OUT)
    return a


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    handle_signals()
    OUT.mkdir(parents=True, exist_ok=True)
    a.doc_path.mkdir(parents=True, exist_ok=True)
    if not a.skip_build:
        log("building: cargo build --release --bin p2p-mediastream --bin loadtest")
        b = children.spawn(["cargo", "build", "--release", "--bin", "p2p-mediastream", "--bin", "loadtest"], "cargo", cwd=REPO)
        try:
            b.wait(timeout=3600)
        except subprocess.TimeoutExpired:
            raise SoakError("cargo build took more than an hour") from None
        children.groups.pop(b.pid, None)
        if b.returncode != 0:
            raise SoakError("cargo build --release failed (see above)")
    for binary in (OURS_BIN, LOADTEST_BIN):
        if not os.access(binary, os.X_OK):
            raise SoakError(f"{binary} is missing; run without --skip-build")
    pin_srv = [] if a.no_pin else ["taskset", "-c", "1"]
    pin_cli = [] if a.no_pin else ["taskset", "-c", "0"]
    if not a.no_pin and (os.cpu_count() or 1) < 2:
        raise SoakError("pinning needs 2 CPUs; use --no-pin")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile[0] < a.connections + 200:
        want = a.connections + 1000
        if nofile[1] != resource.RLIM_INFINITY and nofile[1] < want:
            raise SoakError(f"the fd limit ({nofile[1]}) is too low for {a.connections} connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, nofile[1]))

    port = free_port()
    env = dict(os.environ)
    env.update({
        "TRACKER__SERVER__HOST": "127.0.0.1",
        "TRACKER__SERVER__PORT": str(port),
        "RUST_LOG": "warn,p2p_mediastream=info",
    })
    srv_log = OUT / "server.log"
    lt_json = OUT / "loadtest.json"
    lt_log = OUT / "loadtest.log"
    csv_path = OUT / "samples.csv"
    duration = a.minutes * 60
    lt_args = [str(LOADTEST_BIN), "--url", f"ws://127.0.0.1:{port}/announce",
               "-c", str(a.connections), "--source-ips", "4", "--connect-rate", "500",
               "--swarms", str(a.swarms), "--hot-swarms", "4", "--hot-share", "0.3",
               "--rate", f"{a.rate:g}", "--offers", "5", "--sdp-bytes", "1500",
               "--churn-per-sec", f"{a.churn_per_sec:g}", "--scrape-ratio", "0.05",
               "-d", f"{duration:g}", "--warmup", f"{a.warmup:g}", "--drain", "3",
               "--json", "-q"]
    started = dt.datetime.now(dt.timezone.utc)
    with open(srv_log, "w") as out:
        server = children.spawn(pin_srv + [str(OURS_BIN)], "p2p-mediastream", stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
    loadtest = None
    samples: list[dict] = []
    try:
        deadline = time.monotonic() + 30
        while stats_json(port) is None:
            if server.poll() is not None:
                raise SoakError(f"the server exited with {server.returncode}:\n{tail(srv_log, 10)}")
            if time.monotonic() > deadline:
                raise SoakError(f"the server does not answer /stats.json after 30 s:\n{tail(srv_log, 10)}")
            time.sleep(0.3)
        time.sleep(1)
        base = proc_status(server.pid)
        lt_args += ["--server-pid", str(server.pid)]
        argv_lt = pin_cli + lt_args
        log(f"server pid {server.pid} on 127.0.0.1:{port}, RSS {base.get('VmRSS', 0) / 1048576:.1f} MiB; "
            f"load for {a.minutes:g} min")
        with open(lt_json, "w") as jout, open(lt_log, "w") as eout:
            eout.write(f"$ {shlex.join(argv_lt)}\n")
            eout.flush()
            t0 = time.monotonic()
            loadtest = children.spawn(argv_lt, "loadtest", stdout=jout, stderr=eout, cwd=REPO)
            last_cpu, last_t = cpu_seconds(server.pid), 0.0
            next_sample = 0.0
            settle_end = None
            budget = duration + 3 + 120
            settled_at = None
            while True:
                now = time.monotonic() - t0
                lt_running = loadtest.poll() is None
                if not lt_running and settle_end is None:
                    settle_end = now + SETTLE_TIMEOUT
                    send_end = now
                    children.forget(loadtest)
                    log(f"load stopped (loadtest exit {loadtest.returncode}); waiting up to "
                        f"{SETTLE_TIMEOUT:.0f} s for peers and swarms to reach 0")
                if now > budget and lt_running:
                    raise SoakError(f"loadtest still running after {budget:.0f} s")
                if server.poll() is not None:
                    raise SoakError(f"the server died (exit {server.returncode}) at {now:.0f} s:\n{tail(srv_log, 10)}")
                if now >= next_sample or (settle_end is not None):
                    st = stats_json(port) or {}
                    ps = proc_status(server.pid)
                    cpu = cpu_seconds(server.pid)
                    cpu_pct = None
                    if cpu is not None and last_cpu is not None and now > last_t:
                        cpu_pct = (cpu - last_cpu) / (now - last_t) * 100
                    last_cpu, last_t = cpu, now
                    s = {"t": round(now, 1), "phase": "load" if lt_running else "after",
                         "rss": ps.get("VmRSS"), "hwm": ps.get("VmHWM"), "threads": ps.get("Threads"),
                         "fds": fd_count(server.pid), "cpu_percent": cpu_pct,
                         "peers": st.get("peersCount"), "swarms": st.get("torrentsCount"),
                         "connections": st.get("connections"),
                         "dropped": st.get("deliveriesDropped")}
                    samples.append(s)
                    if len(samples) % 12 == 1 or not lt_running:
                        log(f"t={now:5.0f}s rss {(s['rss'] or 0) / 1048576:6.1f} MiB  peers {s['peers']}  "
                            f"swarms {s['swarms']}  conns {s['connections']}  cpu {cpu_pct or 0:.0f}%")
                    next_sample += SAMPLE_EVERY
                    if settle_end is not None:
                        if s["peers"] == 0 and s["swarms"] == 0 and s["connections"] == 0:
                            settled_at = now - send_end
                            break
                        if now >= settle_end:
                            break
                        time.sleep(1.0)
                        continue
                time.sleep(0.25)
        end_status = proc_status(server.pid)
    finally:
        children.stop(loadtest, grace=5)
        code = children.stop(server, grace=20)
    log(f"server stopped (exit {code})")

    # ------------------------------------------------------------ checks
    report = json.loads(lt_json.read_text()) if lt_json.stat().st_size else None
    with open(csv_path, "w") as fcsv:
        keys = ["t", "phase", "rss", "hwm", "threads", "fds", "cpu_percent", "peers", "swarms", "connections", "dropped"]
        fcsv.write(",".join(keys) + "\n")
        for s in samples:
            fcsv.write(",".join("" if s.get(k) is None else str(s[k]) for k in keys) + "\n")

    steady = [s for s in samples if s["phase"] == "load" and a.warmup <= s["t"] <= duration and s["rss"]]
    checks = []
    q = len(steady) // 4
    if q >= 2:
        q2 = statistics.fmean(s["rss"] for s in steady[q:2 * q])
        q4 = statistics.fmean(s["rss"] for s in steady[3 * q:])
        growth = q4 / q2 - 1
        checks.append(("RSS flat: mean of the last quarter of the steady phase within "
                       f"+{RSS_GROWTH_LIMIT * 100:.0f} % of the second quarter's",
                       growth <= RSS_GROWTH_LIMIT,
                       f"{q2 / 1048576:.1f} MiB -> {q4 / 1048576:.1f} MiB ({growth * 100:+.1f} %)"))
    else:
        q2 = q4 = growth = None
        checks.append(("RSS flat", False, f"only {len(steady)} steady samples; run longer"))
    # Least-squares slope over the second half, for information.
    half = steady[len(steady) // 2:]
    slope_mib_h = None
    if len(half) >= 3:
        xs = [s["t"] for s in half]
        ys = [s["rss"] / 1048576 for s in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope_mib_h = (sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600) if den else 0.0
    after = [s for s in samples if s["phase"] == "after"]
    last = after[-1] if after else {}
    checks.append((f"peers, swarms and connections back to 0 within {SETTLE_TIMEOUT:.0f} s after the tester closed its connections",
                   settled_at is not None,
                   (f"0 / 0 / 0, {settled_at:.1f} s after the tester exited" if settled_at is not None else
                    f"still peers {last.get('peers')}, swarms {last.get('swarms')}, connections {last.get('connections')}")))
    issues = []
    warns = []
    for line in srv_log.read_text(errors="replace").splitlines():
        if re.search(r"\bERROR\b|panicked", line):
            issues.append(line)
        elif re.search(r"\bWARN\b", line):
            warns.append(line)
    checks.append(("no ERROR or panic in the server log", not issues,
                   f"{len(issues)} error lines, {len(warns)} warnings" + (f"; first: {issues[0][:200]}" if issues else "")))
    if report:
        t = report["traffic"]
        e = report["errors"]
        od = t.get("offer_delivery_ratio") or 0
        ad = t.get("answer_delivery_ratio") or 0
        er = e.get("error_rate") or 0
        ok = od >= 0.98 and ad >= 0.98 and er <= 0.02 and not (t["offers_to_self"] or t["offers_wrong_swarm"] or t["answers_misrouted"])
        checks.append(("served correctly throughout: offer and answer delivery >= 0.98, error rate <= 2 %, no misrouting",
                       ok, f"delivery {od:.4f} / {ad:.4f}, error rate {er * 100:.2f} %, "
                           f"anomalies {t['offers_to_self'] + t['offers_wrong_swarm'] + t['answers_misrouted']}"))
    else:
        checks.append(("loadtest report", False, f"no JSON report; see {lt_log}"))
    passed = all(c[1] for c in checks)

    # ------------------------------------------------------------ report
    summary = {"started": started.isoformat(), "minutes": a.minutes, "checks": checks, "passed": passed,
               "rss_baseline": base.get("VmRSS"), "rss_q2": q2, "rss_q4": q4, "growth": growth,
               "slope_mib_per_hour": slope_mib_h, "settled_after_s": settled_at,
               "end_status": end_status, "warnings": warns[:20], "errors": issues[:20]}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    svg_name = "soak.svg"
    (a.doc_path / svg_name).write_text(chart(samples, send_end, a.warmup))
    write_doc(a, argv, started, base, samples, report, checks, passed, summary, svg_name, duration)
    for name, ok, detail in checks:
        log(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    log(f"wrote {a.doc_path / 'soak.md'} and {a.doc_path / svg_name}; raw data in {OUT}")
    return 0 if passed else 1


def fmt(v, d=2):
    return "–" if v is None else f"{v:.{d}f}"


def write_doc(a, argv, started, base, samples, report, checks, passed, summary, svg_name, duration) -> None:
    L = []
    w = L.append
    w("# Soak test")
    w("")
    w(f"Result: **{'PASS' if passed else 'FAIL'}**, run of {a.minutes:g} min started "
      f"{started.strftime('%Y-%m-%d %H:%M')} UTC. Reproduce with:")
    w("")
    w("```sh")
    w("scripts/soak.sh" + ("" if not argv else " " + shlex.join(argv)))
    w("```")
    w("")
    w("## Set-up")
    w("")
    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--name-only", "HEAD", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.split()
    if dirty:
        commit += f" with uncommitted changes in {', '.join(dirty)}"
    w(f"- Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, shared with other work.")
    w(f"- Server: `target/release/p2p-mediastream` at commit {commit}, default settings except "
      "`TRACKER__SERVER__HOST=127.0.0.1 TRACKER__SERVER__PORT=<free port> RUST_LOG=warn,p2p_mediastream=info`"
      + ("" if a.no_pin else ", pinned to core 1 (`taskset -c 1`); the load tester on core 0") + ".")
    w(f"- Load (`loadtest`): {a.connections} connections over 4 source IPs, {a.swarms} swarms of which 4 hot "
      f"(30 % of the peers), the rest Zipf-distributed; {a.rate:g} announces/s in total (each peer every "
      f"{a.connections / a.rate:g} s), 5 offers × 1500 B per announce, every offer answered; "
      f"{a.churn_per_sec:g} connections/s closed and reopened with a new peer_id; one scrape per 20 "
      f"announces; {duration / 60:g} min, the first {a.warmup:g} s warm-up. The default per-connection "
      "limits stay on (20 msg/s, 1000 connections per IP): this load stays under them, as real clients do.")
    w(f"- Every {SAMPLE_EVERY:g} s: the server's VmRSS, VmHWM, threads and open fds from `/proc/PID`, its "
      "CPU from `/proc/PID/stat`, and `peersCount`, `torrentsCount`, `connections` from `/stats.json`.")
    w("")
    w("## Checks")
    w("")
    w("| check | result | measured |")
    w("|---|---|---|")
    for name, ok, detail in checks:
        w(f"| {name} | {'pass' if ok else '**FAIL**'} | {detail} |")
    w("")
    w("Why this RSS criterion: the steady phase (after the warm-up, while the load runs) is split into "
      "quarters. The first quarter is left out because the allocator, the swarm maps and the "
      "per-connection buffers are still reaching their working size then, and churn has not yet "
      "replaced the first generation of peers. A leak proportional to traffic or to churned "
      "connections grows linearly, so it shows as the last quarter's mean rising above the "
      "second's; the 10 % margin absorbs allocator noise (glibc arenas give memory back in steps). "
      "For information, the least-squares slope of RSS over the second half of the steady phase: "
      f"{fmt(summary['slope_mib_per_hour'], 1)} MiB per hour.")
    w("")
    w(f"![RSS and peers over time]({svg_name})")
    w("")
    if report:
        t, lat, thr, c, e = (report["traffic"], report["latency_ms"], report["throughput"],
                             report["connections"], report["errors"])
        srv = report.get("server") or {}
        w("## Load tester summary (measurement window)")
        w("")
        w("| figure | value |")
        w("|---|---|")
        win = report.get("window_secs") or 1
        w(f"| window | {win:.0f} s |")
        w(f"| announces sent / responses | {t['announces_sent']:,} / {t['announce_responses']:,} ({t['announces_sent'] / win:.0f}/s) |")
        w(f"| offers expected / received (delivery) | {t['offers_expected']:,} / {t['offers_received']:,} ({fmt(t['offer_delivery_ratio'], 4)}) |")
        w(f"| answers sent / received (delivery) | {t['answers_sent']:,} / {t['answers_received']:,} ({fmt(t['answer_delivery_ratio'], 4)}) |")
        w(f"| scrapes sent / responses | {t['scrapes_sent']:,} / {t['scrape_responses']:,} |")
        w(f"| messages/s at the client (in + out) | {thr['msgs_per_sec']:,.0f} |")
        for key, label in (("announce_rtt", "announce round trip"), ("offer_relay", "offer relay A→B"),
                           ("signalling_rtt", "offer→answer"), ("scrape_rtt", "scrape round trip")):
            p = lat.get(key)
            if p:
                w(f"| {label} p50 / p99 / p99.9 / max (ms) | {p['p50']:.2f} / {p['p99']:.2f} / {p['p99_9']:.2f} / {p['max']:.2f} |")
        w(f"| connections attempted / established / failed | {c['attempted']:,} / {c['established']:,} / {c['failed']:,} |")
        w(f"| churned (closed by the tester) / closed by the server / lost | {c['churned']:,} / {c['closed_by_server']:,} / {c['lost']:,} |")
        w(f"| errors / requests (rate) | {e['errors']:,} / {e['requests']:,} ({(e.get('error_rate') or 0) * 100:.3f} %) |")
        if e.get("failure_reasons"):
            fr = "; ".join(f"{k!r} ×{v}" for k, v in sorted(e["failure_reasons"].items(), key=lambda kv: -kv[1])[:5])
            fr = fr.replace("|", "\\|")
            w(f"| failure reasons | {fr} |")
        w(f"| anomalies (to self / wrong swarm / misrouted) | {t['offers_to_self']} / {t['offers_wrong_swarm']} / {t['answers_misrouted']} |")
        w(f"| server CPU (% of a core) / run-queue wait | {srv.get('cpu_percent', 0):.0f} % / {srv.get('runqueue_wait_percent', 0):.1f} % |")
        w(f"| client CPU / host busy | {report['client']['cpu_percent']:.0f} % / {report['host']['busy_percent']:.0f} % |")
        w("")
        if report.get("notes"):
            w("Notes from the load tester:")
            w("")
            for n in report["notes"]:
                w(f"- {n}")
            w("")
    w("## Samples")
    w("")
    w(f"Every 30 s of load, then every sample after the load stopped (all {len(samples)} samples, one per "
      f"{SAMPLE_EVERY:g} s, are in `target/bench/soak/samples.csv`). Baseline before the load: RSS "
      f"{(base.get('VmRSS') or 0) / 1048576:.1f} MiB.")
    w("")
    w("| t (s) | phase | RSS (MiB) | VmHWM (MiB) | peers | swarms | connections | fds | threads | server CPU % |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    shown = []
    next_t = 0.0
    for s in samples:
        if s["phase"] == "after" or s["t"] >= next_t:
            shown.append(s)
            if s["phase"] == "load":
                next_t = (s["t"] // 30 + 1) * 30
    for s in shown:
        mib = lambda v: "–" if v is None else f"{v / 1048576:.1f}"  # noqa: E731
        w(f"| {s['t']:.0f} | {s['phase']} | {mib(s['rss'])} | {mib(s['hwm'])} | {s['peers']} | {s['swarms']} | "
          f"{s['connections']} | {s['fds']} | {s['threads']} | {fmt(s['cpu_percent'], 0)} |")
    w("")
    if summary["warnings"]:
        w("Warnings in the server log (first 20):")
        w("")
        w("```")
        for l in summary["warnings"]:
            w(l[:240])
        w("```")
        w("")
    (a.doc_path / "soak.md").write_text("\n".join(L))


if __name__ == "__main__":
    run_main(main, SoakError, children)
