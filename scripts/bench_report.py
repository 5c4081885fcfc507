"""The report of the tracker benchmark: docs/benchmarks.md and its SVG charts, made from
the results that scripts/bench-trackers.py leaves in a results directory (summary.json and
each run's `loadtest --json` report, STEP-TRACKER-rN.json). Python 3.11+, standard library
only. Run by the benchmark at its end and by `scripts/bench-trackers.sh --render-only`;
on its own:

    python3 scripts/bench_report.py [--quick] [--results-dir DIR] [--doc-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chart import Axis, Series, line_chart  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "target" / "bench" / "results"

SERVER_CORE = "1"
CLIENT_CORE = "0"
P99_LIMIT_MS = 10.0
DELIVERY_LIMIT = 0.99

TRACKERS = ("ours", "aquatic", "reference")
SHORT = {"ours": "ours", "aquatic": "aquatic_ws", "reference": "bittorrent-tracker"}
COLOR = {"ours": "#1f77b4", "aquatic": "#2ca02c", "reference": "#ff7f0e"}


def shown_path(path: Path, outside: str = "(a directory outside the repository)") -> str:
    """A path as a report shows it: relative to the repository, else `outside`; never a
    path of this machine."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else outside


# ---------------------------------------------------------------- runs and figures

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



def build_aggregates(summary: dict, results: Path) -> dict:
    """step -> tracker -> aggregate (or None), from the runs listed in summary.json and
    their loadtest reports in `results`."""
    runs = []
    for d in summary["runs"]:
        r = RunResult(**d)
        if r.ok:
            path = results / f"{r.step}-{r.tracker}-r{r.repeat}.json"
            try:
                r.report = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                r.ok, r.error = False, f"cannot read {path.name}: {err.strerror if isinstance(err, OSError) else err}"
        runs.append(r)
    out: dict = {}
    for step in summary["steps"]:
        out[step["id"]] = {t: aggregate([r for r in runs if r.step == step["id"] and r.tracker == t])
                           for t in summary["trackers"]}
    return out


# ---------------------------------------------------------------- charts

def svg_chart(title: str, xlabel: str, ylabel: str, series: dict, log_y: bool = False,
              hline: tuple[float, str] | None = None) -> str:
    """series: name -> list of (x, y, saturated); a name "TRACKER:signal" is that tracker's
    signalling-only figure, dashed. Saturated points are drawn hollow."""
    lines = []
    for name, pts in series.items():
        base, _, variant = name.partition(":")
        lines.append(Series(SHORT.get(base, base) + (" (signalling only)" if variant else ""),
                            COLOR.get(base, "#333"), [(x, y) for x, y, _ in pts],
                            hollow={x for x, _, sat in pts if sat}, dash="6 4" if variant else ""))
    return line_chart(title, Axis(xlabel, pad=1.05), Axis(ylabel, log=log_y), lines, hline=hline,
                      hollow_legend=("saturated", [f"(p99 > {P99_LIMIT_MS:g} ms or",
                                                   f"delivery < {DELIVERY_LIMIT})"]))


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



def render(summary: dict, doc_dir: Path, results: Path) -> Path:
    """Writes benchmarks.md and its three SVGs into `doc_dir` from `summary` (summary.json
    with "aggregates" from build_aggregates); `results` is named in the Raw data section."""
    lines: list[str] = []
    w = lines.append
    _intro(w, summary)
    _setup(w, summary)
    _headline(w, summary)
    _per_step(w, summary)
    _idle_memory(w, summary)
    _raw_data(w, summary, results)
    doc = doc_dir / "benchmarks.md"
    doc.write_text("\n".join(lines))
    _charts(summary, doc_dir)
    return doc


def _intro(w, summary: dict) -> None:
    w("# Tracker benchmark: ours vs aquatic_ws vs bittorrent-tracker")
    w("")
    if summary["quick"]:
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


def _setup(w, summary: dict) -> None:
    steps, trackers, agg = summary["steps"], summary["trackers"], summary["aggregates"]
    avail = [t for t in trackers if not summary["unavailable"].get(t)]
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


def _max_sustained(summary: dict, t: str, rate_steps: list[dict]) -> str:
    """The highest rate step that tracker `t` sustains, as the headline says it."""
    if summary["unavailable"].get(t):
        return "not measured"
    sustained = [s["rate"] for s in rate_steps
                 if (summary["aggregates"].get(s["id"], {}).get(t) or {}).get("sustained")]
    if not sustained:
        return f"< {min(s['rate'] for s in rate_steps):g}/s" if rate_steps else "–"
    best = max(sustained)
    return f"{best:g}/s" + (" (highest step tried)" if best == max(s["rate"] for s in rate_steps) else "")


def _first_saturated(agg: dict, t: str, rate_steps: list[dict]) -> str:
    """The first rate step at which tracker `t` saturated, with what saturated it."""
    for s in rate_steps:
        a = agg.get(s["id"], {}).get(t)
        if a and a["saturated_runs"]:
            return (f"{s['rate']:g}/s: p99 {f(a['p99_min'], 1)}–{f(a['p99_max'], 1)} ms, delivery "
                    f"{f(min(a['offer_delivery'] or 1, a['answer_delivery'] or 1), 3)}, CPU {f(a['cpu_percent'], 0)} %")
    return "–"


def _headline(w, summary: dict) -> None:
    steps, trackers, agg = summary["steps"], summary["trackers"], summary["aggregates"]
    rate_steps = [s for s in steps if s["kind"] == "rate"]
    prefix = "benchmarks"
    w("## Headline")
    w("")
    hdr = "| | " + " | ".join(SHORT[t] for t in trackers) + " |"
    w(hdr)
    w("|---|" + "---|" * len(trackers))
    cells = [_max_sustained(summary, t, rate_steps) for t in trackers]
    w(f"| max sustained announce rate, 1000 conns, p99 ≤ {P99_LIMIT_MS:g} ms | " + " | ".join(cells) + " |")
    cells = [_first_saturated(agg, t, rate_steps) for t in trackers]
    w("| first saturated step (p99 range over repeats, worse delivery ratio, server CPU) | " + " | ".join(cells) + " |")

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


STEP_ROWS = [  # label, aggregate key, digits, suffix
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


def _per_step(w, summary: dict) -> None:
    w("## Per step")
    w("")
    for s in summary["steps"]:
        if s["kind"] != "idle":
            _step_table(w, summary, s)
            _step_notes(w, summary, s)


def _step_table(w, summary: dict, s: dict) -> None:
    trackers, agg = summary["trackers"], summary["aggregates"]
    peers = [t for t in trackers if t != "ours"]
    w(f"### `{s['id']}`: {s['describe']}")
    w("")
    head = "| | " + " | ".join(SHORT[t] for t in trackers)
    if "ours" in trackers:
        head += "".join(f" | ours / {SHORT[p]}" for p in peers)
    w(head + " |")
    w("|---|" + "---|" * (len(trackers) + (len(peers) if "ours" in trackers else 0)))
    for label, key, digits, suffix in STEP_ROWS:
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


def _step_notes(w, summary: dict, s: dict) -> None:
    trackers, agg = summary["trackers"], summary["aggregates"]
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


def _idle_memory(w, summary: dict) -> None:
    trackers, agg = summary["trackers"], summary["aggregates"]
    idle = next((s for s in summary["steps"] if s["kind"] == "idle"), None)
    if not idle:
        return
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
      "thread and keeps only bytes the kernel has not taken yet (src/connection/io.rs). What is "
      "left, by heaptrack at 2000 idle connections (`heaptrack_print --print-peaks`): the "
      "session's task with its actor and WebsocketContext (~700 B), tokio's I/O registration "
      "(256 B, cache-line aligned), the context's output queue that actix-web-actors keeps "
      "after the first message (~160 B), the connection registry entry (~150 B), the peer's "
      "entry in its swarm (~170 B), the actor's mailbox and the addresses held by the swarm "
      "and the registry (~350 B), plus the allocator's own overhead. Node's figure also "
      "depends on when V8 last collected garbage.")
    w("")


def _raw_data(w, summary: dict, results: Path) -> None:
    inside = shown_path(results, "")
    where = f"`{inside}/`" if inside else "the directory given with `--results-dir`"
    again = ("scripts/bench-trackers.sh --render-only" + (" --quick" if summary["quick"] else "")
             + ("" if inside else " --results-dir DIR"))
    w("## Raw data")
    w("")
    w(f"Every run's `loadtest --json` report, the server log and the tester's stderr are in {where} "
      "(`STEP-TRACKER-rN.json`, `.server.log`, `.loadtest.log`), with "
      "`summary.json` listing the runs this page was made from; "
      f"`{again}` remakes this page from them.")
    w("")


def _charts(summary: dict, doc_dir: Path) -> None:
    agg = summary["aggregates"]
    avail = [t for t in summary["trackers"] if not summary["unavailable"].get(t)]
    rate_steps = [s for s in summary["steps"] if s["kind"] == "rate"]
    prefix = "benchmarks"

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


# ---------------------------------------------------------------- on its own

def default_dirs(quick: bool) -> tuple[Path, Path]:
    """(results directory, doc directory) unless given: a --quick trial never replaces the
    full run's raw data or docs/benchmarks.md."""
    if quick:
        return RESULTS / "quick", REPO / "target" / "bench" / "quick"
    return RESULTS, REPO / "docs"


def load(results: Path) -> dict:
    """summary.json of a results directory, with its aggregates."""
    summary = json.loads((results / "summary.json").read_text())
    summary["aggregates"] = build_aggregates(summary, results)
    return summary


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the results of a --quick run (target/bench/results/quick/ -> target/bench/quick/)")
    p.add_argument("--results-dir", default=None, help="where summary.json and the runs' reports are "
                   "(default target/bench/results/)")
    p.add_argument("--doc-dir", default=None, help="where benchmarks.md and the SVGs go (default docs/)")
    args = p.parse_args(argv)
    results, doc_dir = default_dirs(args.quick)
    results = Path(args.results_dir) if args.results_dir else results
    doc_dir = Path(args.doc_dir) if args.doc_dir else doc_dir
    if not (results / "summary.json").exists():
        print(f"bench_report: {results / 'summary.json'} does not exist: run the benchmark first",
              file=sys.stderr)
        return 2
    doc_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench_report: wrote {render(load(results), doc_dir, results)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
